"""Token estimates: Assistants runs, chat streams, the offline tokenizer, fitted constants."""
