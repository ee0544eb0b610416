"""LLM distillation: causal-LM teachers and students, teacher text and top-k caches, LM losses."""
