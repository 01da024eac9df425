"""Building blocks of the Llama-family decoder: linear factory, RMSNorm, RoPE, SwiGLU."""
