"""How fast mnist-cnn-demo answers a drawing: the pad's PNG (280x280, one stroke) posted --repeats
times to a page that shows MODEL..., each answer timed by the client (the whole request) beside the
time the server reports (reading the picture and every model's forward pass).

    python benchmarks/demo_latency.py MODEL [MODEL ...] [--tracking-uri URI] [--repeats 50]

MODEL is what mnist-cnn-demo takes. The page's server runs in this process, on a free port of
127.0.0.1, as mnist-cnn-demo starts it; nothing is written.
"""

import argparse
import io
import json
import statistics
import threading
import time
import urllib.request
from typing import List, Tuple

from PIL import Image, ImageDraw

from mnist_cnn.cli import common, demo


def drawing() -> bytes:
    """A 4 as the pad sends it: black strokes 18 pixels wide on white, 280x280, PNG."""
    picture = Image.new("RGB", (280, 280), "white")
    pen = ImageDraw.Draw(picture)
    for stroke in ([(110, 40), (80, 160), (200, 160)], [(170, 60), (170, 250)]):
        pen.line(stroke, fill="black", width=18, joint="curve")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def timed(url: str, picture: bytes, repeats: int) -> Tuple[List[float], List[float]]:
    """(client, server) milliseconds of each of `repeats` answers, after one untimed warm-up."""
    client, server = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, data=picture, method="POST"), timeout=30) as reply:
            body = json.loads(reply.read())
        if i:
            client.append((time.perf_counter() - start) * 1000)
            server.append(body["ms"])
    return client, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="MODEL")
    common.tracking_uri_argument(parser)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    page, _ = demo.start(argparse.Namespace(models=args.models, tracking_uri=args.tracking_uri, data_root=None, port=0))
    threading.Thread(target=page.serve_forever, daemon=True).start()
    client, server = timed(f"http://127.0.0.1:{page.server_address[1]}/predict", drawing(), args.repeats)
    page.shutdown()
    for name, times in (("whole request (client)", client), ("server: picture read, models run", server)):
        p95 = statistics.quantiles(times, n=20)[-1]
        print(f"{name}: median {statistics.median(times):.1f} ms, 95th percentile {p95:.1f} ms")
    print(f"{len(args.models)} models, {args.repeats} answers of a 280x280 drawing")


if __name__ == "__main__":
    main()
