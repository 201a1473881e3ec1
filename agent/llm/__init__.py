"""The LLM layer: one backend interface over vLLM/OpenAI servers and in-process transformers."""
