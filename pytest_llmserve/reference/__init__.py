"""What an engine is compared with: the Hugging Face reference (in its own process), cached engine outputs, prompt sets and accuracy tasks."""
