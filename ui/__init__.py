"""The web interface: a Gradio app over rag.service, mounted beside the HTTP API."""
