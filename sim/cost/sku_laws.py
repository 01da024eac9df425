"""Fitted operator laws per GPU SKU (see sim.cost.op_laws). GENERATED: do not edit by hand.

    python -m sim.cost.fit_laws /work/shared/profiles/vidur-gpu --write sim/cost/sku_laws.py
"""

SKU_LAWS = {
    'a100-80g': {
        'sku': 'a100-80g',
        'source': 'Llama-2-70b-hf, Llama-2-7b-hf, Meta-Llama-3-8B, phi-2',
        'gemm': {
            'qkv_proj': {'floor_s': 8.15682e-06, 'bytes_per_s': 1.86099e+12, 'flops_per_s': 2.2431e+14, 'tile_m': 128, 'p': 2.5, 'small_tile_m': 64},
            'o_proj': {'floor_s': 4.39877e-06, 'bytes_per_s': 1.54357e+12, 'flops_per_s': 2.16688e+14, 'tile_m': 128, 'p': 2.5, 'small_tile_m': 64},
            'up_proj': {'floor_s': 8.80704e-06, 'bytes_per_s': 1.72901e+12, 'flops_per_s': 2.32288e+14, 'tile_m': 128, 'p': 2.5, 'small_tile_m': 64},
            'down_proj': {'floor_s': 5.14852e-06, 'bytes_per_s': 1.61308e+12, 'flops_per_s': 2.34264e+14, 'tile_m': 128, 'p': 2.5, 'small_tile_m': 64},
        },
        'elementwise': {
            'input_norm': {'floor_s': 4.72618e-06, 'bytes_per_s': 7.51147e+11, 'p': 2},
            'rope': {'floor_s': 3.45425e-06, 'bytes_per_s': 8.3119e+11, 'p': 2},
            'post_attn_norm': {'floor_s': 4.47303e-06, 'bytes_per_s': 7.16744e+11, 'p': 2},
            'act': {'floor_s': 3.94406e-06, 'bytes_per_s': 9.7247e+11, 'p': 2},
            'add': {'floor_s': 2.4086e-06, 'bytes_per_s': 1.83466e+12, 'p': 2},
            'embed': {'floor_s': 5.1374e-06, 'bytes_per_s': 3.00236e+11, 'p': 2},
        },
    },
    'h100-sxm': {
        'sku': 'h100-sxm',
        'source': 'CodeLlama-34b-Instruct-hf, Llama-2-7b-hf, phi-2',
        'gemm': {
            'qkv_proj': {'floor_s': 8.26961e-06, 'bytes_per_s': 3.4007e+12, 'flops_per_s': 6.90379e+14, 'tile_m': 128, 'p': 2.5, 'small_tile_m': 64},
            'o_proj': {'floor_s': 5.64765e-06, 'bytes_per_s': 3.09557e+12, 'flops_per_s': 6.82029e+14, 'tile_m': 128, 'p': 2.5, 'small_tile_m': 64},
            'up_proj': {'floor_s': 8.90409e-06, 'bytes_per_s': 3.20504e+12, 'flops_per_s': 7.03472e+14, 'tile_m': 128, 'p': 2.5, 'small_tile_m': 64},
            'down_proj': {'floor_s': 6.31579e-06, 'bytes_per_s': 2.95066e+12, 'flops_per_s': 7.24817e+14, 'tile_m': 128, 'p': 2.5, 'small_tile_m': 64},
        },
        'elementwise': {
            'input_norm': {'floor_s': 4.52579e-06, 'bytes_per_s': 1.34369e+12, 'p': 2},
            'rope': {'floor_s': 2.76587e-06, 'bytes_per_s': 1.49993e+12, 'p': 2},
            'post_attn_norm': {'floor_s': 4.21402e-06, 'bytes_per_s': 1.21619e+12, 'p': 2},
            'act': {'floor_s': 2.76481e-06, 'bytes_per_s': 1.81399e+12, 'p': 2},
            'add': {'floor_s': 1.98646e-06, 'bytes_per_s': 3.26812e+12, 'p': 2},
            'embed': {'floor_s': 4.28358e-06, 'bytes_per_s': 5.86929e+11, 'p': 2},
        },
    },
}
