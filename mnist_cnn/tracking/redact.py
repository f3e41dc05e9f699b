"""Keep credentials out of everything a run writes: params, tags, config files, logs, messages.

MLflow reads credentials for an HTTP tracking server from the environment
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN); that is the way
to pass them. A URI typed with credentials anyway (`http://user:secret@host:5000`,
`...?token=...`, `postgresql://user:secret@db/mlflow`) is taken apart before Hydra sees the
command line (`move_credentials`), so Hydra's own files and console never hold the secret, and
`redact` masks whatever is left in any text that is about to be written. No MLflow import here.
"""

import os
import re
from typing import Dict, List, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_PARAM = re.compile(r"token|passw|pwd|secret|key|sig|auth|credential", re.IGNORECASE)
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")  # not the sentence's full stop
URI_OVERRIDE = re.compile(r"^(\+{0,2}tracking\.uri=)(.*)$")


def redact_uri(uri: str) -> str:
    """`http://user:secret@host/x?token=abc&a=1` -> `http://user:***@host/x?token=***&a=1`."""
    parts = urlsplit(uri)
    userinfo, _, host = parts.netloc.rpartition("@")
    fields = parts.query.split("&") if parts.query else []
    masked = [f"{f.partition('=')[0]}={MASK}" if SECRET_PARAM.search(f.partition("=")[0]) else f for f in fields]
    if ":" not in userinfo and masked == fields:
        return uri  # nothing secret; also keeps sqlite:////abs/path intact, which urlunsplit would not
    netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}" if ":" in userinfo else parts.netloc
    return urlunsplit(parts._replace(netloc=netloc, query="&".join(masked)))


def redact(text: str) -> str:
    """Every URI inside `text`, redacted."""
    return URL.sub(lambda m: redact_uri(m.group(0)), text)


def split_http_credentials(uri: str) -> Tuple[str, Dict[str, str]]:
    """An http(s) URI without its credentials, and the MLflow environment variables that carry them."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return uri, {}
    env: Dict[str, str] = {}
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in ("token", "access_token"):
            env["MLFLOW_TRACKING_TOKEN"] = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(kept))), env


def move_credentials(argv: List[str]) -> List[str]:
    """Take the credentials out of a `tracking.uri=...` override, into the environment this process
    and its sweep jobs inherit: http(s) ones into MLflow's own variables; any other URI that holds a
    secret (a database password) whole into MLFLOW_TRACKING_URI, which the override then names."""
    out = []
    for arg in argv:
        match = URI_OVERRIDE.match(arg)
        if match and redact_uri(match.group(2)) != match.group(2):
            prefix, uri = match.groups()
            clean, env = split_http_credentials(uri)
            if redact_uri(clean) != clean:  # still a secret inside: hand the whole URI over
                env, clean = {"MLFLOW_TRACKING_URI": uri}, "${oc.env:MLFLOW_TRACKING_URI}"
            os.environ.update(env)
            print(
                f"mnist-cnn: the credentials in tracking.uri were moved to {', '.join(sorted(env))} for this "
                "command, so that no log or file holds them; set those variables yourself next time.",
                flush=True,
            )
            arg = prefix + clean
        out.append(arg)
    return out
