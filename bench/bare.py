"""The reference: a bare aiosmtpd server whose handler only answers 250.

Run as ``python -m bench.bare PORT``; same data size limit and DATA handling as the capture
listener (``decode_data=False``), nothing stored, nothing checked.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return "250 OK"


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(_Sink(), data_size_limit=26214400, decode_data=False, enable_SMTPUTF8=True),
        "127.0.0.1",
        port,
        reuse_address=True,
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
