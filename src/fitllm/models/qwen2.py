"""Qwen2: the Llama block with q/k/v biases (picked up by Linear) and NeoX-style RoPE."""

from fitllm.models.llama import LlamaModel


class Qwen2Model(LlamaModel):
    neox_rope = True
