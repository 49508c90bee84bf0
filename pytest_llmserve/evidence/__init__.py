"""What a running server says about itself: optimisations (CUDA graphs etc.), precision, /metrics samples, greedy tokens with logprobs."""
