"""Serving over `VLMEngine`: the terminal chat (`cli_chat`) and the Gradio demo (`gradio_demo`).

`session` holds what both share: loading a saved model (`load_served_model`) and how a chat history becomes the engine's messages (`build_messages`). Gradio is
imported only by `gradio_demo`, so the CLI chat works without the `demo` extra.
"""
