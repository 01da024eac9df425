"""Replicas behind routers: one replica is step for step the single-replica simulator; the
routers route as documented; bad router names and replica counts are clear errors."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

import traces
from experiments.cli import main
from policy import SchedulerConfig
from policy.router import ROUTERS, build_router
from sim import simulate
from sim.cluster import simulate_cluster
from sim.cost.roofline import RooflineCostModel

COST = RooflineCostModel.from_names("llama-3-8b", "h100-sxm")
CONFIG = SchedulerConfig(num_blocks=1500, block_size=16, max_model_len=8192, max_num_seqs=32,
                         max_num_batched_tokens=512, enable_prefix_caching=True)
AZURE = traces.generate("azure-conv-like", seed=7, num_requests=300, rate_scale=4.0)
SHARED = traces.generate("shared-prefix", seed=1, num_groups=6, prompts_per_group=20, system_prompt_len=1024,
                         question_len=64, output_len=64, rate=40.0)


def reqs(table):
    return table.iter_requests(block_size=16, vocab_size=32000)


@pytest.mark.parametrize("name", list(ROUTERS))
@pytest.mark.parametrize("decode_runs", [True, False])
def test_one_replica_is_the_single_replica_simulator(name, decode_runs):
    single = simulate(reqs(AZURE), CONFIG, COST, decode_runs=decode_runs)
    cluster = simulate_cluster(reqs(AZURE), CONFIG, COST, build_router(name, 1), decode_runs=decode_runs)
    assert single.stats.num_preemptions > 0  # the pool is small enough to reach that edge too
    (rep,) = cluster.replicas
    assert rep.stats == single.stats
    assert rep.recorder.timelines == single.recorder.timelines
    assert rep.recorder.steps == single.recorder.steps


def test_round_robin_spreads_requests_evenly():
    cluster = simulate_cluster(reqs(AZURE), CONFIG, COST, build_router("round-robin", 3))
    assert cluster.routed == [100, 100, 100]
    s = cluster.summary
    assert s["num_finished"] == 300 and s["num_replicas"] == 3 and len(s["per_replica"]) == 3
    assert sorted(cluster.requests_df["replica"].value_counts().tolist()) == [100, 100, 100]


def test_prefix_aware_routing_keeps_groups_together_and_hits_more():
    rr = simulate_cluster(reqs(SHARED), CONFIG, COST, build_router("round-robin", 4))
    pa = simulate_cluster(reqs(SHARED), CONFIG, COST, build_router("prefix-aware", 4))
    assert pa.summary["prefix_hit_rate"] > rr.summary["prefix_hit_rate"]
    assert pa.summary["num_finished"] == rr.summary["num_finished"] == len(SHARED)


def test_least_tokens_balances_outstanding_work():
    router = build_router("least-tokens", 2)
    cluster = simulate_cluster(reqs(AZURE), CONFIG, COST, router)
    assert router.outstanding == [0, 0]  # every routed request ended and was accounted for
    assert cluster.summary["load_imbalance_busy"] < 1.2


def test_bad_router_and_replica_count():
    with pytest.raises(ValueError, match="unknown router 'fastest'; known routers: round-robin"):
        build_router("fastest", 2)
    with pytest.raises(ValueError, match="at least one replica"):
        build_router("round-robin", 0)


@pytest.mark.parametrize("args,needle", [
    (["--replicas", "0"], "--replicas"),
    (["--replicas", "2", "--router", "fastest"], "unknown router 'fastest'"),
])
def test_cli_bad_input(args, needle):
    res = CliRunner().invoke(main, ["sim", "--preset", "azure-conv-like", "--param", "num_requests=10", "--quiet", *args])
    assert res.exit_code != 0 and needle in res.output


def test_cli_replicas(tmp_path):
    res = CliRunner().invoke(main, ["sim", "--preset", "azure-conv-like", "--param", "num_requests=60", "--replicas", "2",
                                    "--router", "least-tokens", "--out", str(tmp_path), "--format", "parquet"])
    assert res.exit_code == 0, res.output
    assert "replica" in res.output
    df = pd.read_parquet(tmp_path / "requests.parquet")
    assert set(df["replica"]) == {0, 1} and len(df) == 60
    assert (tmp_path / "replica-1" / "summary.json").is_file()
