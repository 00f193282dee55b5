"""The web demo's chat state and its small helpers: per-tab session, image store, conversation log, the
original UI's template-by-name fallback and its moderation check."""
from __future__ import annotations

import datetime
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from mgm.conversation import Conversation, conv_templates


def template_for_model_name(model_name: str) -> str:
    """The original UI's rule (used when the worker does not report its template)."""
    name = model_name.lower()
    if "mgm" in name or "mini-gemini" in name:
        if "8x7b" in name:
            return "mistral_instruct"
        if "34b" in name:
            return "chatml_direct"
        if "2b" in name:
            return "gemma"
        if "llama3" in name or "llama-3" in name or "8b" in name:
            return "llama_3"
    return "vicuna_v1"


def violates_moderation(text: str, timeout: float = 5.0) -> bool:
    """OpenAI moderation check (needs OPENAI_API_KEY); any failure counts as not flagged (original rule)."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        return False
    try:
        response = httpx.post("https://api.openai.com/v1/moderations", json={"input": text.replace("\n", " ")},
                              headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
        return bool(response.json()["results"][0]["flagged"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return False


# --- chat state --------------------------------------------------------------------------------------
@dataclass
class ChatSession:
    """One browser tab's chat: the conversation in the model's template plus what the UI shows.

    `images` maps a message index to the file shown for it (the uploaded image of a user turn, or a
    generated picture of an assistant turn). `template` is None until the first answer picks it.
    """

    conv: Conversation = field(default_factory=lambda: conv_templates["vicuna_v1"].copy())
    template: str | None = None
    images: dict[int, str] = field(default_factory=dict)
    skip_next: bool = False

    def chatbot(self) -> list[dict[str, Any]]:
        """Gradio-6 messages: `{"role", "content"}` with images as file entries."""
        out: list[dict[str, Any]] = []
        conv = self.conv
        for index, (_role, message) in enumerate(conv.messages[conv.offset:], start=conv.offset):
            user = (index - conv.offset) % 2 == 0
            if message is None:
                continue
            if isinstance(message, tuple):
                text = message[0].replace("<image>", "").strip() if user else message[0]
            else:
                text = message
            content: list[Any] = []
            if index in self.images and user:
                content.append({"path": self.images[index]})
            if text:
                content.append(text)
            if index in self.images and not user:
                content.append({"path": self.images[index]})
            out.append({"role": "user" if user else "assistant", "content": content if len(content) != 1 else content[0]})
        return out


def save_image(image: Image.Image, log_dir: str, prefix: str = "") -> str:
    """Store an image as `<log dir>/serve_images/YYYY-MM-DD/<prefix><md5>.jpg`; returns the path."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG")
    data = buffer.getvalue()
    folder = Path(log_dir) / "serve_images" / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}{hashlib.md5(data).hexdigest()}.jpg"
    if not path.exists():
        path.write_bytes(data)
    return str(path.resolve())


def conv_log_file(log_dir: str) -> Path:
    return Path(log_dir) / f"{datetime.date.today().isoformat()}-conv.json"
