"""OCR hints: read the text in an image so it can be added to the prompt (docs/original.md#serving).

`build_ocr(backend="auto", device="auto")` returns an object with `.read(image) -> str`: the recognised
texts with confidence > 0.1, joined by ", " (the original's rule), in reading order. Engines:

- "rapidocr" (default): rapidocr >= 3 on onnxruntime. Its wheel ships PaddleOCR's own PP-OCR
  detection/classification/recognition models as ONNX, so it works offline on any machine; CUDA is
  used when onnxruntime has the CUDA provider and the device asks for it.
- "paddle": PaddleOCR itself. It downloads models unless given local folders, so it is only used with
  local model folders named by environment variables (PaddleX/PaddleOCR inference format):
  `MGM_PADDLEOCR_DET_DIR`, `MGM_PADDLEOCR_REC_DIR` (required), `MGM_PADDLEOCR_CLS_DIR` (optional,
  text-line orientation), `MGM_PADDLEOCR_LANG` (default "ch").
- "auto": "paddle" when `paddleocr` is importable and those folders are set, else "rapidocr".

The engine is created once per `build_ocr` call; `read` is thread-safe (one image at a time).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Protocol

import numpy as np
from PIL import Image

from mgm.errors import UserError

MIN_CONFIDENCE = 0.1  # the original kept texts with confidence > 0.1
BACKENDS = ("auto", "rapidocr", "paddle")
PADDLE_ENV = {"det": "MGM_PADDLEOCR_DET_DIR", "rec": "MGM_PADDLEOCR_REC_DIR", "cls": "MGM_PADDLEOCR_CLS_DIR",
              "lang": "MGM_PADDLEOCR_LANG"}


class OCREngine(Protocol):
    """What the CLI, the worker and the web demo use."""

    name: str

    def read(self, image: Image.Image) -> str: ...


def join_texts(texts: list[str], scores: list[float]) -> str:
    """The original's rule: keep texts with confidence > 0.1, join with ", "."""
    return ", ".join(t for t, s in zip(texts, scores) if s > MIN_CONFIDENCE and t)


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


class RapidOCREngine:
    """rapidocr >= 3 with onnxruntime (models inside the wheel, offline)."""

    name = "rapidocr"

    def __init__(self, device: str = "auto") -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError:
            raise UserError('OCR needs rapidocr and onnxruntime: pip install "mgm[ocr]"') from None
        use_cuda = False
        if device != "cpu":
            try:
                import onnxruntime

                use_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
            except ImportError:
                raise UserError('OCR needs onnxruntime: pip install "mgm[ocr]"') from None
            if device.startswith("cuda") and not use_cuda:
                use_cuda = False  # onnxruntime without CUDA: run on the CPU rather than fail
        params: dict[str, Any] = {
            "Global.log_level": "error",
            # the recogniser drops texts under its own threshold (0.5 by default); keep the original's 0.1
            "Global.text_score": MIN_CONFIDENCE,
            "Global.use_cls": True,  # the original ran PaddleOCR with use_angle_cls=True, cls=True
            "EngineConfig.onnxruntime.use_cuda": use_cuda,
        }
        self.engine = RapidOCR(params=params)
        self.lock = threading.Lock()

    def read(self, image: Image.Image) -> str:
        with self.lock:
            out = self.engine(_rgb_array(image))
        texts = list(getattr(out, "txts", None) or [])
        scores = [float(s) for s in (getattr(out, "scores", None) or [])]
        return join_texts(texts, scores)


class PaddleOCREngine:
    """PaddleOCR with local model folders (it cannot download models offline)."""

    name = "paddle"

    def __init__(self, device: str = "auto", dirs: dict[str, str] | None = None) -> None:
        dirs = dirs if dirs is not None else paddle_dirs_from_env()
        missing = [PADDLE_ENV[k] for k in ("det", "rec") if not dirs.get(k)]
        if missing:
            raise UserError(f"the PaddleOCR backend needs local model folders: set {' and '.join(missing)} "
                            "(PaddleOCR inference format), or use the default rapidocr backend")
        for key in ("det", "rec", "cls"):
            if dirs.get(key) and not os.path.isdir(dirs[key]):
                raise UserError(f"{PADDLE_ENV[key]}={dirs[key]} is not a folder")
        try:
            import paddleocr
        except ImportError:
            raise UserError('the PaddleOCR backend needs paddleocr: pip install "mgm[ocr-paddle]"') from None
        gpu = device.startswith("cuda") or device == "gpu"
        lang = dirs.get("lang") or "ch"
        self.lock = threading.Lock()
        self.v3 = hasattr(paddleocr.PaddleOCR, "predict")
        if self.v3:  # PaddleOCR 3.x: PaddleX pipeline
            kwargs: dict[str, Any] = dict(
                text_detection_model_dir=dirs["det"], text_recognition_model_dir=dirs["rec"],
                use_doc_orientation_classify=False, use_doc_unwarping=False,
                use_textline_orientation=bool(dirs.get("cls")), device="gpu" if gpu else "cpu",
                enable_mkldnn=False, lang=lang)
            if dirs.get("cls"):
                kwargs["textline_orientation_model_dir"] = dirs["cls"]
        else:  # PaddleOCR 2.x: the original's constructor
            kwargs = dict(use_angle_cls=True, lang=lang, use_gpu=gpu, det_model_dir=dirs["det"],
                          rec_model_dir=dirs["rec"], show_log=False)
            if dirs.get("cls"):
                kwargs["cls_model_dir"] = dirs["cls"]
        try:
            self.engine = paddleocr.PaddleOCR(**kwargs)
        except Exception as exc:
            raise UserError(f"PaddleOCR could not start with the folders {dirs}: {type(exc).__name__}: {exc}") from None

    def read(self, image: Image.Image) -> str:
        array = _rgb_array(image)[:, :, ::-1].copy()  # PaddleOCR expects BGR like cv2.imread
        texts: list[str] = []
        scores: list[float] = []
        with self.lock:
            if self.v3:
                for page in self.engine.predict(array) or []:
                    texts += list(page["rec_texts"])
                    scores += [float(s) for s in page["rec_scores"]]
            else:
                for page in self.engine.ocr(array, cls=True) or []:
                    for _box, (text, score) in page or []:
                        texts.append(text)
                        scores.append(float(score))
        return join_texts(texts, scores)


def paddle_dirs_from_env() -> dict[str, str]:
    return {k: os.environ[v] for k, v in PADDLE_ENV.items() if os.environ.get(v)}


def _paddle_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("paddleocr") is not None


def build_ocr(backend: str = "auto", device: str = "auto") -> OCREngine:
    """Create the OCR engine (see the module docstring for the backends). UserError if unavailable."""
    if backend not in BACKENDS:
        raise UserError(f"--ocr-backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "paddle":
        return PaddleOCREngine(device)
    if backend == "auto":
        dirs = paddle_dirs_from_env()
        if dirs.get("det") and dirs.get("rec") and _paddle_importable():
            return PaddleOCREngine(device, dirs)
    return RapidOCREngine(device)
