"""The embedded tiny base model: shipped corpus, tokenizer training, Llama pretraining."""
