"""Constants shared across mgm, with the exact names and values of the original `mgm/constants.py`.

Token indices are negative on purpose: they never collide with a vocabulary id, so the model can find
the positions where image features are spliced in (`IMAGE_TOKEN_INDEX`) and the loss can skip masked
labels (`IGNORE_INDEX`, PyTorch's cross-entropy default).
"""
from __future__ import annotations

# Worker / controller timing (seconds), used by the serving stack.
CONTROLLER_HEART_BEAT_EXPIRATION = 30
WORKER_HEART_BEAT_INTERVAL = 15

# Largest image (width * height) the CLI, the data loader and the servers decode: 8192 x 8192, under
# PIL's own decompression-bomb thresholds (89 Mpx warning, 179 Mpx error).
MAX_IMAGE_PIXELS = 8192 * 8192

# Where the serving stack writes its logs and conversation records.
LOGDIR = "."

# Model constants.
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
PREDICT_TOKEN_INDEX = -300  # unused by the original; kept for import compatibility
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
DEFAULT_PREDICT_TOKEN = "<predict>"  # unused by the original; kept for import compatibility

# Ten "describe the image" instructions. Unused by the original code paths; kept for import
# compatibility (the wording here is ours).
DESCRIPT_PROMPT = (
    "Describe this image in detail.",
    "Give a thorough description of what this picture shows.",
    "What is happening in this image? Explain in detail.",
    "Provide a detailed account of the contents of this image.",
    "Walk me through everything you can see in this photo.",
    "Write a comprehensive description of the scene in this image.",
    "Explain the visual content of this image as completely as you can.",
    "Describe the objects, people and setting shown in this image.",
    "Offer an in-depth description of this picture.",
    "Tell me, in detail, what this image depicts.",
)

# The UI strings of the original (`server_error_msg`, `moderation_msg` in its mgm/utils.py): one copy,
# re-exported by mgm.utils (original names) and mgm.serve.protocol (the servers').
SERVER_ERROR_MSG = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
MODERATION_MSG = "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."
