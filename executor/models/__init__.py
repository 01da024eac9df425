"""Model definitions. One class family (`llama_like`) covers Llama, Qwen2 and Qwen3 by flags."""

from executor.models.llama_like import LlamaLikeForCausalLM

__all__ = ["LlamaLikeForCausalLM"]
