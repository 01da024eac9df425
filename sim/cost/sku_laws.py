"""Fitted operator laws per GPU SKU (see sim.cost.op_laws). GENERATED: do not edit by hand.

    python -m sim.cost.fit_laws ../shared/profiles/vidur-gpu --write sim/cost/sku_laws.py
"""

SKU_LAWS = {
    'a100-80g': {
        'sku': 'a100-80g',
        'source': 'Llama-2-70b-hf, Llama-2-7b-hf, Meta-Llama-3-8B, phi-2',
        'gemm': {
            'qkv_proj': {'floor_s': 7.8522e-06, 'bytes_per_s': 3.30553e+12, 'flops_per_s': 2.25985e+14, 'tile_m': 128, 'p': 2},
            'o_proj': {'floor_s': 4.39156e-06, 'bytes_per_s': 2.28747e+12, 'flops_per_s': 2.18696e+14, 'tile_m': 128, 'p': 2},
            'up_proj': {'floor_s': 7.84425e-06, 'bytes_per_s': 2.66185e+12, 'flops_per_s': 2.33369e+14, 'tile_m': 128, 'p': 2},
            'down_proj': {'floor_s': 4.9613e-06, 'bytes_per_s': 2.3429e+12, 'flops_per_s': 2.36093e+14, 'tile_m': 128, 'p': 2},
        },
        'elementwise': {
            'input_norm': {'floor_s': 4.39949e-06, 'bytes_per_s': 7.7057e+11, 'p': 2},
            'rope': {'floor_s': 3.27425e-06, 'bytes_per_s': 8.42725e+11, 'p': 2},
            'post_attn_norm': {'floor_s': 4.18357e-06, 'bytes_per_s': 7.29351e+11, 'p': 2},
            'act': {'floor_s': 3.09803e-06, 'bytes_per_s': 9.87682e+11, 'p': 2},
            'add': {'floor_s': 2.12279e-06, 'bytes_per_s': 1.89834e+12, 'p': 2},
            'embed': {'floor_s': 4.3446e-06, 'bytes_per_s': 3.00736e+11, 'p': 2},
        },
    },
    'h100-sxm': {
        'sku': 'h100-sxm',
        'source': 'CodeLlama-34b-Instruct-hf, Llama-2-7b-hf, phi-2',
        'gemm': {
            'qkv_proj': {'floor_s': 7.56691e-06, 'bytes_per_s': 3.8034e+12, 'flops_per_s': 7.0527e+14, 'tile_m': 128, 'p': 2},
            'o_proj': {'floor_s': 5.19619e-06, 'bytes_per_s': 3.40648e+12, 'flops_per_s': 6.99884e+14, 'tile_m': 128, 'p': 2},
            'up_proj': {'floor_s': 8.18916e-06, 'bytes_per_s': 3.67062e+12, 'flops_per_s': 7.18773e+14, 'tile_m': 128, 'p': 2},
            'down_proj': {'floor_s': 6.00637e-06, 'bytes_per_s': 3.30459e+12, 'flops_per_s': 7.5453e+14, 'tile_m': 128, 'p': 2},
        },
        'elementwise': {
            'input_norm': {'floor_s': 4.29419e-06, 'bytes_per_s': 1.39465e+12, 'p': 2},
            'rope': {'floor_s': 2.5622e-06, 'bytes_per_s': 1.52162e+12, 'p': 2},
            'post_attn_norm': {'floor_s': 3.97214e-06, 'bytes_per_s': 1.2426e+12, 'p': 2},
            'act': {'floor_s': 2.04992e-06, 'bytes_per_s': 1.84237e+12, 'p': 2},
            'add': {'floor_s': 1.56877e-06, 'bytes_per_s': 3.37155e+12, 'p': 2},
            'embed': {'floor_s': 3.49352e-06, 'bytes_per_s': 5.85029e+11, 'p': 2},
        },
    },
}
