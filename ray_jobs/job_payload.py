"""How a job's input and result cross the submitter/job boundary, kept import-light for the submitter.

The input (a training config or a pipeline plan) travels in the job's environment as base64 JSON: no quoting, no
shared files, and no multi-kilobyte entrypoint echoed into the job log. The result comes back as one marked line
of the job log.
"""

from __future__ import annotations

import base64
from typing import TypeVar

from pydantic import BaseModel

RESULT_MARKER = "REASONDISTILL_RESULT "
PAYLOAD_ENV = "REASONDISTILL_JOB_PAYLOAD"
PayloadT = TypeVar("PayloadT", bound=BaseModel)


def encode_payload(payload: BaseModel) -> str:
    return base64.urlsafe_b64encode(payload.model_dump_json().encode()).decode()


def decode_payload(kind: type[PayloadT], blob: str) -> PayloadT:
    return kind.model_validate_json(base64.urlsafe_b64decode(blob.encode()))
