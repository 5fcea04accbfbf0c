"""``POST /predict``: the request's images received into files (bounded), the answer's media type chosen, the
request handed to LitServe's workers and their answer returned, or refused with ``{"error": "one line"}``.

It is a LitSpec (LitServe's hook for endpoints of one's own, as its OpenAI spec) rather than LitAPI's default
endpoint, which reads every body as JSON or a form into memory before anything else: an image body, a size bound
checked before the body is read, a deadline answered with 504 while the worker is still busy, and one-line JSON
errors need the endpoint itself.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import shutil
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urljoin, urlsplit

try:
    from fastapi import HTTPException, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from litserve.specs.base import LitSpec
    from litserve.utils import LitAPIStatus, ResponseBufferItem
    from starlette.background import BackgroundTask
    from starlette.datastructures import UploadFile
except ImportError as e:  # the serve extra; `lemevit serve` says so before it imports this module
    raise ImportError('lemevit.serve needs LitServe: pip install "lemevit[serve]"') from e

from lemevit.serve.answers import JSON, TaskAnswers

__all__ = ["PredictEndpoint", "Refused", "check_token", "error_response"]

_CHUNK = 1 << 20
# The bytes that tell the image formats lemevit reads, and the suffix their readers go by.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"),
               (b"MM\x00*", ".tif"), (b"II+\x00", ".tif"), (b"MM\x00+", ".tif"), (b"BM", ".bmp"))
# A STAC Item is a small JSON document.
_STAC_ITEM_BYTES = 1 << 20


class Refused(Exception):
    """A request refused with ``status`` and one line saying why."""

    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def error_response(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(error).split())}, status_code=status)


def check_token(request: Request, token: str | None) -> None:
    """Refuse with 401 a request without ``Authorization: Bearer TOKEN``, compared in constant time."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "this server needs the header Authorization: Bearer TOKEN (its --token)",
                            headers={"WWW-Authenticate": "Bearer"})


def _suffix(path: Path, name: str) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise Refused(400, f"{name} is empty")
    for signature, suffix in _SIGNATURES:
        if head.startswith(signature):
            return suffix
    raise Refused(415, f"{name} is not a PNG, JPEG, TIFF or BMP image")


def _named_image(path: Path, name: str) -> str:
    """``path`` renamed with the suffix of its format (lemevit's readers go by it)."""
    return str(path.rename(path.with_suffix(_suffix(path, name))))


def _negotiate(accept: str, offered: tuple[str, ...]) -> str | None:
    """The first media type of ``accept`` that the task answers with (None: the default for the input)."""
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in ("", "*/*"):
            return None
        kind = media.split("/")[0]
        matching = [m for m in offered if m == media or (media.endswith("/*") and m.startswith(f"{kind}/"))]
        if matching:
            return matching[0]
    raise Refused(406, f"Accept: {accept}: this model answers with {', '.join(offered)}")


def _download(url: str, target: Path, limit: int, timeout: float) -> None:
    """Fetch ``url`` (http or https only: a server must not read its own files for anyone) into ``target``,
    refusing more than ``limit`` bytes."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise Refused(400, f"{url}: only http and https URLs are read")
    # No FTP or file handler: redirects go to http(s) only.
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.HTTPHandler, urllib.request.HTTPSHandler, urllib.request.HTTPRedirectHandler,
                    urllib.request.HTTPDefaultErrorHandler, urllib.request.HTTPErrorProcessor):
        opener.add_handler(handler())
    try:
        with opener.open(url, timeout=timeout) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise Refused(413, f"{url} is {int(length):,} bytes, more than the server's --max-body-mb")
            received = 0
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > limit:
                    raise Refused(413, f"{url} is more than the server's --max-body-mb")
                out.write(chunk)
    except OSError as e:
        raise Refused(400, f"cannot read {url}: {getattr(e, 'reason', None) or e}") from None


def _stac_asset(item_url: str, asset: str | None, folder: Path, timeout: float) -> str:
    """The URL of the image asset ``asset`` of the STAC Item at ``item_url`` (by default its one image asset)."""
    item_file = folder / "item.json"
    _download(item_url, item_file, _STAC_ITEM_BYTES, timeout)
    try:
        assets = json.loads(item_file.read_text()).get("assets") or {}
    except (ValueError, AttributeError):
        raise Refused(400, f"{item_url} is not a STAC Item (JSON with assets)") from None
    if asset is None:
        images = [name for name, a in assets.items() if str(a.get("type", "")).startswith("image/")]
        if len(images) != 1:
            raise Refused(400, f"{item_url}: name the asset to read (\"asset\"), one of {', '.join(assets)}")
        asset = images[0]
    if asset not in assets or "href" not in assets[asset]:
        raise Refused(400, f"{item_url} has no asset {asset!r}; its assets are {', '.join(assets)}")
    return urljoin(item_url, assets[asset]["href"])


class PredictEndpoint(LitSpec):
    """``POST /predict`` for a model whose requests carry the image ``parts`` of ``answers``."""

    def __init__(self, answers: TaskAnswers, max_body: int, timeout: float, allow_urls: bool):
        super().__init__()
        self.api_path = "/predict"
        self.parts, self.media_types = answers.parts, answers.media_types
        self.max_body, self.timeout, self.allow_urls = max_body, timeout, allow_urls
        self.add_endpoint(self.api_path, self.predict, ["POST"])

    async def predict(self, request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return error_response(413, f"the body is {int(length):,} bytes, more than the server's --max-body-mb "
                                       f"({self.max_body:,} bytes)")
        folder = Path(tempfile.mkdtemp(prefix="lemevit-serve-"))
        response: Response | None = None
        try:
            accept = _negotiate(request.headers.get("accept", ""), self.media_types)
            inputs = await self._receive(request, folder)
            payload = {"inputs": inputs, "accept": accept, "folder": str(folder),
                       "deadline": time.time() + self.timeout}
            answer = await self._answer(payload)
            if "file" in answer:
                response = FileResponse(answer["file"], media_type=answer["media_type"],
                                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))
            elif "json" in answer:
                response = JSONResponse(answer["json"], media_type=JSON)
            else:
                response = error_response(answer["status"], answer["error"])
            return response
        except Refused as e:
            return error_response(e.status, e.error)
        finally:
            if not isinstance(response, FileResponse):
                shutil.rmtree(folder, ignore_errors=True)

    async def _receive(self, request: Request, folder: Path) -> dict[str, str]:
        """The request's images as files in ``folder``, by part."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            return await self._receive_parts(request, folder)
        if kind == "application/json":
            return await self._receive_urls(request, folder)
        if kind.startswith("image/") or kind in ("application/octet-stream", ""):
            if len(self.parts) > 1:
                raise Refused(400, f"this model takes {len(self.parts)} images: send them as multipart/form-data "
                                   f"parts {' and '.join(self.parts)}")
            body = folder / f"{self.parts[0]}.upload"
            with open(body, "wb") as out:
                async for chunk in request.stream():  # LitServe's MaxSizeMiddleware counts it: 413 past the bound
                    out.write(chunk)
            return {self.parts[0]: _named_image(body, "the body")}
        raise Refused(415, f"Content-Type {kind}: send an image (image/*), multipart/form-data parts "
                           f"{', '.join(self.parts)}, or JSON naming URLs (with --allow-urls)")

    async def _receive_parts(self, request: Request, folder: Path) -> dict[str, str]:
        async with request.form(max_files=len(self.parts), max_fields=0) as form:
            inputs = {}
            for part in self.parts:
                upload = form.get(part)
                if not isinstance(upload, UploadFile):
                    raise Refused(400, f"the multipart part {part!r} is missing: this model takes the image part(s) "
                                       f"{', '.join(self.parts)}")
                target = folder / f"{part}.upload"
                with open(target, "wb") as out:
                    while chunk := await upload.read(_CHUNK):
                        out.write(chunk)
                inputs[part] = _named_image(target, f"the part {part!r}")
        return inputs

    async def _receive_urls(self, request: Request, folder: Path) -> dict[str, str]:
        if not self.allow_urls:
            raise Refused(403, "this server reads no URLs (start it with --allow-urls): send the image itself")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise Refused(400, "the body is not JSON") from None
        sources = {self.parts[0]: body} if len(self.parts) == 1 else body
        if not isinstance(sources, dict) or any(part not in sources for part in self.parts):
            raise Refused(400, f"the JSON body names the images {', '.join(self.parts)}: "
                               f"{{{', '.join(f'{p!r}: SOURCE' for p in self.parts)}}}")
        inputs = {}
        for part in self.parts:
            source = sources[part]
            if isinstance(source, str):
                source = {"url": source}
            if not isinstance(source, dict) or not ({"url", "stac_item"} & set(source)):
                raise Refused(400, f"{part}: give {{\"url\": URL}} or {{\"stac_item\": URL, \"asset\": NAME}}")
            url = source.get("url")
            if url is None:
                url = await asyncio.to_thread(_stac_asset, str(source["stac_item"]), source.get("asset"), folder,
                                              self.timeout)
            target = folder / f"{part}.upload"
            await asyncio.to_thread(_download, str(url), target, self.max_body, self.timeout)
            inputs[part] = _named_image(target, str(url))
        return inputs

    async def _answer(self, payload: dict) -> dict:
        """Hand ``payload`` to LitServe's workers, as its own endpoints do, and wait for the answer until the
        request's deadline (504 then: the worker drops the request at its next forward pass)."""
        uid = uuid.uuid4().hex
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        try:
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), payload))
            await asyncio.wait_for(event.wait(), max(0.0, payload["deadline"] - time.time()))
            answer, status = self.response_buffer[uid].response
        except asyncio.TimeoutError:
            raise Refused(504, "the request ran past the server's --timeout") from None
        finally:
            self.response_buffer.pop(uid, None)
        if status == LitAPIStatus.ERROR:
            # LitServe's own refusals (a request that waited in the queue past the timeout) are HTTPExceptions;
            # anything else is a failure of the worker, which LitServe logged.
            if isinstance(answer, HTTPException):
                raise Refused(answer.status_code, str(answer.detail))
            raise Refused(500, "the worker failed on this request (the server's log has the reason)")
        return answer
