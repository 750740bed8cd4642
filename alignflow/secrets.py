"""Credentials stay with the process that uses them, and out of every message.

A child process (a trainer, EvalScope, `evalscope perf`, vLLM) gets `child_env`: this process's environment
without anything that looks like a credential, plus exactly the variables it uses. A URL that may carry a
`user:password@` part passes through `redact_url` before it reaches an error or a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

# what a credential's name looks like (compared upper-case); AWS_* goes too: only a child that talks to
# the store needs its endpoint, region or profile, and it is given them by name
CREDENTIAL_SUFFIXES = ("_KEY", "_KEYS", "_TOKEN", "_SECRET", "_PASSWORD", "_CREDENTIALS", "_AUTH_STRING",
                       "_CONNECTION_STRING", "_CONNECTION_URL")
CREDENTIAL_PREFIXES = ("AWS_",)
# the credentials alignflow's users are known to hold; most match the patterns too, DATABASE_URL does not
CREDENTIAL_NAMES = {"PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING",
                    "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "HF_TOKEN",
                    "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "WANDB_API_KEY", "DATABASE_URL"}

USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s\"']+@")


def is_credential(name: str) -> bool:
    """'AWS_SECRET_ACCESS_KEY', 'HF_TOKEN', 'DB_PASSWORD' -> True; 'PATH', 'CUDA_VISIBLE_DEVICES' -> False."""
    upper = name.upper()
    return upper in CREDENTIAL_NAMES or upper.startswith(CREDENTIAL_PREFIXES) or upper.endswith(CREDENTIAL_SUFFIXES)


def without_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without the variables `is_credential` names."""
    return {name: value for name, value in env.items() if not is_credential(name)}


def child_env(keep: Iterable[str] = (), **extra: str | None) -> dict[str, str]:
    """The environment for a child process: os.environ without credentials, then the variables named in
    `keep` (those that are set here), then `extra`, where a None value leaves the variable out.

    child_env(keep=("WANDB_API_KEY",), ALIGNFLOW_EVAL_API_KEY=key, PYTHONPATH=None) gives PATH, HOME, ... as
    here, WANDB_API_KEY as here (when set), ALIGNFLOW_EVAL_API_KEY=key, and no PYTHONPATH, AWS_*, HF_TOKEN,
    PREFECT_API_KEY or any other credential.
    """
    env = without_credentials(os.environ)
    env.update({name: os.environ[name] for name in keep if name in os.environ})
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def redact_url(text: str | None) -> str | None:
    """A URL, or any text with URLs in it, without their `user:password@` part.

    >>> redact_url("http://a:b@h:1/x")
    'http://***@h:1/x'
    >>> redact_url('Could not connect to the endpoint URL: "http://admin:pw@127.0.0.1:8333/b"')
    'Could not connect to the endpoint URL: "http://***@127.0.0.1:8333/b"'
    """
    return USERINFO.sub(r"\g<scheme>***@", text) if text else text
