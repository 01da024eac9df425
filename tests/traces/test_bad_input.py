"""Bad input never passes silently: each error names the file, the line and the reason, and
every dropped row is counted in the table's notes."""

from __future__ import annotations

import json

import pytest

import traces
from traces.errors import TraceFormatError

AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD_AZURE = ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:50.9951690,396,109"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def expect_error(path, line, reason, **kwargs):
    with pytest.raises(TraceFormatError) as info:
        traces.load(path, **kwargs)
    err = info.value
    assert err.path == str(path) and err.line == line, str(err)
    assert reason in err.reason, str(err)
    assert str(path) in str(err)
    return err


def test_azure_reads_seven_digit_fractions_without_a_trailing_newline(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEAD + "\n".join(GOOD_AZURE))
    table = traces.load(path)
    assert table.df["arrival_s"].tolist() == pytest.approx([0.0, 4.3145790])
    assert table.df["prompt_len"].tolist() == [374, 396]


def test_azure_2024_timestamps_with_six_digits_and_a_zone(tmp_path):
    text = AZURE_HEAD + "2024-05-10 00:00:00.009930+00:00,2162,5\n2024-05-10 00:00:01.5+00:00,10,2\n2024-05-10 00:01:00+00:00,7,1"
    table = traces.load(write(tmp_path, "a24.csv", text))
    assert table.df["arrival_s"].tolist() == pytest.approx([0.0, 1.49007, 59.99007])


@pytest.mark.parametrize("row, line, reason", [
    ("2023-11-16 18:15:52.0,-3,10", 4, "ContextTokens=-3"),
    ("2023-11-16 18:15:52.0,,10", 4, "ContextTokens=nan"),
    ("2023-11-16 18:15:52.0,12,x", 4, "GeneratedTokens='x'"),
    ("2023-11-16 18:15:40.0,12,10", 4, "TIMESTAMP goes backwards"),
])
def test_azure_bad_rows_name_the_line(tmp_path, row, line, reason):
    expect_error(write(tmp_path, "a.csv", AZURE_HEAD + "\n".join(GOOD_AZURE + [row])), line, reason)


def test_azure_unparseable_timestamp_and_malformed_row(tmp_path):
    expect_error(write(tmp_path, "a.csv", AZURE_HEAD + "\n".join(GOOD_AZURE + ["yesterday,1,1"])), 4, "TIMESTAMP")
    with pytest.raises(TraceFormatError, match=r"a\.csv.*malformed CSV.*line 4"):
        traces.load(write(tmp_path, "a.csv", AZURE_HEAD + "\n".join(GOOD_AZURE + ["2023-11-16 18:15:52.0,1,2,3,4"])))


def test_missing_column_with_explicit_format(tmp_path):
    expect_error(write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.0,3\n"), 1, "missing column(s) ['GeneratedTokens']",
                 format="azure")


def test_unknown_format_is_named(tmp_path):
    expect_error(write(tmp_path, "x.csv", "a,b\n1,2\n"), 1, "unknown CSV header")
    expect_error(write(tmp_path, "x.jsonl", '{"foo": 1}\n'), 1, "unknown JSON Lines record")
    with pytest.raises(ValueError, match="unknown trace format 'yaml'"):
        traces.load(write(tmp_path, "y.csv", "a\n"), format="yaml")


def test_vidur_nan_and_backwards(tmp_path):
    head = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
    expect_error(write(tmp_path, "v.csv", head + "0.0,10,5\nnan,3,3\n"), 3, "arrived_at is missing")
    expect_error(write(tmp_path, "v.csv", head + "1.0,10,5\n0.5,3,3\n"), 3, "goes backwards")
    expect_error(write(tmp_path, "v.csv", head + "0.0,10,5\n0.5,0,3\n"), 3, "num_prefill_tokens=0")


def mooncake_line(t, n_in, n_out, hashes):
    return json.dumps({"timestamp": t, "input_length": n_in, "output_length": n_out, "hash_ids": hashes})


@pytest.mark.parametrize("bad, reason", [
    ('{"timestamp": 5, "input_length": 3', "malformed JSON"),
    ('{"timestamp": 5, "output_length": 3, "hash_ids": [0]}', "missing field 'input_length'"),
    (mooncake_line(5, -1, 3, [0]), "input_length=-1"),
    (mooncake_line(5, 2000, 3, [0, 1]), "2 hash_ids cannot cover input_length=2000"),
    (mooncake_line(-7, 10, 3, [0]), "timestamp=-7"),
])
def test_mooncake_bad_lines(tmp_path, bad, reason):
    text = "\n".join([mooncake_line(0, 600, 3, [0, 1]), mooncake_line(3000, 10, 4, [0]), bad]) + "\n"
    expect_error(write(tmp_path, "m.jsonl", text), 3, reason)


def test_mooncake_backwards_timestamp(tmp_path):
    text = "\n".join([mooncake_line(3000, 600, 3, [0, 1]), mooncake_line(0, 10, 4, [0])])
    expect_error(write(tmp_path, "m.jsonl", text), 2, "goes backwards")


def test_canonical_jsonl_checks(tmp_path):
    good = '{"request_id":"a","arrival_s":0,"prompt_len":3,"output_len":2}'
    expect_error(write(tmp_path, "c.jsonl", good + '\n{"request_id":"b","arrival_s":1,"prompt_len":3}\n'), 2, "missing field 'output_len'")
    expect_error(write(tmp_path, "c.jsonl", good + '\n{"request_id":"b","arrival_s":NaN,"prompt_len":3,"output_len":2}\n'), 2, "arrival_s=nan")
    expect_error(write(tmp_path, "c.jsonl", good + '\n{"request_id":"b","arrival_s":1,"prompt_len":3,"output_len":2,"colour":1}\n'),
                 2, "unknown field")


def test_burstgpt_counts_failed_rows(tmp_path):
    text = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,100,20,120,Conversation log\n"
            "6,GPT-4,50,0,50,Conversation log\n"
            "9,GPT-4,70,30,100,API log\n")
    table = traces.load(write(tmp_path, "b.csv", text))
    assert len(table) == 2 and table.df["arrival_s"].tolist() == [0.0, 4.0]
    assert any("dropped 1 failed request" in n for n in table.notes)
    only4 = traces.load(tmp_path / "b.csv", model="GPT-4")
    assert len(only4) == 1 and any("dropped 1 other" in n for n in only4.notes)


def test_bailian_sessions_and_blocks(tmp_path):
    rows = [
        {"chat_id": 1, "parent_chat_id": -1, "timestamp": 10.0, "input_length": 40, "output_length": 5, "type": "text", "turn": 1,
         "hash_ids": [7, 8, 9]},
        {"chat_id": 2, "parent_chat_id": 1, "timestamp": 12.5, "input_length": 70, "output_length": 6, "type": "text", "turn": 2,
         "hash_ids": [7, 8, 9, 10, 11]},
    ]
    path = write(tmp_path, "q.jsonl", "\n".join(json.dumps(r) for r in rows))
    table = traces.load(path)
    assert table.df["session_id"].tolist() == ["1", "1"] and table.df["turn"].tolist() == [1, 2]
    assert (table.df["hash_block_size"] == 16).all() and table.df["arrival_s"].tolist() == [0.0, 2.5]
    a, b = table.iter_requests()
    assert a.prompt_token_ids[:32] == b.prompt_token_ids[:32]
    bad = dict(rows[1], chat_id=3, hash_ids=[1])
    expect_error(write(tmp_path, "q.jsonl", "\n".join(json.dumps(r) for r in rows + [bad])), 3, "cannot cover")


def test_sharegpt_approximation_is_flagged(tmp_path):
    data = [{"id": "c1", "conversations": [{"from": "human", "value": "x" * 40}, {"from": "gpt", "value": "y" * 9},
                                           {"from": "human", "value": ""}, {"from": "gpt", "value": "z"}]}]
    path = write(tmp_path, "s.json", json.dumps(data))
    table = traces.load(path)
    assert table.df[["prompt_len", "output_len"]].values.tolist() == [[10, 3]]
    assert any("APPROXIMATED" in n for n in table.notes) and any("dropped 1 turn pair" in n for n in table.notes)
    expect_error(write(tmp_path, "s.json", '[{"id": 1, "conversations": ['), 1, "malformed JSON", format="sharegpt")


def test_sharegpt_counts_with_a_given_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # one token per word or punctuation mark
    tok.save(str(tmp_path / "tokenizer.json"))
    data = [{"id": "c1", "conversations": [{"from": "human", "value": "Hello there, how are you?"}, {"from": "gpt", "value": "Fine."}]}]
    table = traces.load(write(tmp_path, "s.json", json.dumps(data)), tokenizer=str(tmp_path))
    assert table.df[["prompt_len", "output_len"]].values.tolist() == [[7, 2]]  # Hello there , how are you ? | Fine .
    assert any("counted with the tokenizer" in n for n in table.notes)
    assert not any("APPROXIMATED" in n for n in table.notes)


def test_table_rejects_duplicate_ids_bad_lengths_and_nan_arrivals():
    import pandas as pd

    from traces.table import TraceTable

    base = {"request_id": ["a", "b"], "arrival_s": [0.0, 1.0], "prompt_len": [3, 4], "output_len": [1, 2]}
    with pytest.raises(ValueError, match="duplicate request_id 'a'"):
        TraceTable.from_dataframe(pd.DataFrame(dict(base, request_id=["a", "a"])), source="t")
    with pytest.raises(ValueError, match="row 1: column 'prompt_len' must be an integer"):
        TraceTable.from_dataframe(pd.DataFrame(dict(base, prompt_len=[3, float("nan")])), source="t")
    with pytest.raises(ValueError, match="row 0: output_len must be >= 1"):
        TraceTable.from_dataframe(pd.DataFrame(dict(base, output_len=[-1, 2])), source="t")
    with pytest.raises(ValueError, match="missing required column"):
        TraceTable.from_dataframe(pd.DataFrame({"request_id": ["a"]}), source="t")


# issue 17: a binary file given as a trace with --format used to fail with
# "'utf-8' codec can't decode byte 0xf0 in position 40" and no file named.
@pytest.mark.parametrize("fmt", ["azure", "mooncake", "bailian", "burstgpt", "sharegpt", "vidur", "canonical-jsonl"])
def test_binary_file_names_file_line_and_byte_offset(tmp_path, fmt):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\n" + b"\x00\x01" + b"\xf0\x28\x8c\x28" * 4)
    err = expect_error(path, 2, "not UTF-8 text: byte 0xf0 at byte offset 42", format=fmt)
    assert fmt in err.reason


def test_non_parquet_file_read_as_parquet_names_the_file(tmp_path):
    path = write(tmp_path, "t.parquet", "not parquet at all\n")
    expect_error(path, None, "not a readable Parquet file")


def test_cli_reports_binary_trace_in_one_line(tmp_path):
    from click.testing import CliRunner

    from traces.cli import stats

    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 40 + b"\xf0\x28\x8c\x28")
    res = CliRunner().invoke(stats, [str(path), "--format", "mooncake"])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert f"{path}:1: not UTF-8 text: byte 0xf0 at byte offset 40" in res.output
