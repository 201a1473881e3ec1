"""Two-stage recommendation: a retriever's top-N candidates, reranked by the LLM with the
user's profile and recent history (retrieve -> profile -> rerank -> top-K)."""
