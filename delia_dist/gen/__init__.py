"""DELIA data generation: diverse self-sampling (vLLM) and instruction diversification
(any OpenAI-compatible chat endpoint)."""
