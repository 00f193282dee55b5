"""Serving: controller, model worker, Gradio UI and CLI, with the original FastChat-style wire protocol
(`protocol.py`) plus an OpenAI-compatible chat API (`openai_protocol.py`)."""
