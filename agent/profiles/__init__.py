"""Hierarchical cross-domain user profiles (LLM4CDSR): groups -> domains -> one profile."""
