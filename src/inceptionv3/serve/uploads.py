"""Request bodies, bounded and in memory: the upload limit is checked on ``Content-Length`` before a byte is
read and again on the bytes counted as they stream in, and multipart forms are parsed in memory (no
temporary files: the server writes nothing to disk)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class Failure(Exception):
    """A request the server refuses: HTTP ``status``, a metric ``kind``, and a reason for the client."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers or {}


@dataclass
class Upload:
    name: str       # the file name the client gave (or "body" for a raw body)
    data: bytes


def too_large(limit: int) -> Failure:
    return Failure(413, "too_large", f"the request body is larger than the upload limit of {limit / 2**20:g} MB "
                                     "(the server's --max-upload-mb)")


def check_length(content_length: str | None, limit: int) -> None:
    """413 from the declared length alone, before the body is read."""
    if content_length is None:
        return
    try:
        n = int(content_length)
    except ValueError:
        raise Failure(400, "bad_request", f"Content-Length is not a number: {content_length!r}") from None
    if n > limit:
        raise too_large(limit)


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The whole body, refusing it (413) as soon as the declared or the counted size passes ``limit``."""
    check_length(content_length, limit)
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise too_large(limit)
    return bytes(buf)


def parse_multipart(body: bytes, content_type: str) -> list[Upload]:
    """The file parts of a multipart/form-data body, in order (form fields without a file name are skipped)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise Failure(400, "bad_request", "multipart/form-data without a boundary in its Content-Type")
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    field, value = bytearray(), bytearray()

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1][0][bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise Failure(400, "bad_request", f"malformed multipart body: {e}") from None
    uploads = []
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        filename = disposition.get(b"filename")
        if filename is not None:
            name = filename.decode("utf-8", "replace") or f"file{len(uploads)}"
            uploads.append(Upload(name, bytes(data)))
    if not uploads:
        raise Failure(400, "bad_request", "the form has no files: send images as multipart files "
                                          "(curl -F file=@cat.jpg) or as the raw request body")
    return uploads


def uploads_of(body: bytes, content_type: str | None) -> list[Upload]:
    """The images of a request: the files of a multipart form, or the raw body as one image."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return parse_multipart(body, content_type or "")
    if kind in ("application/json", "application/x-www-form-urlencoded", "text/plain"):
        raise Failure(400, "bad_request", f"a {kind} body is not an image: send the image bytes (curl "
                                          "--data-binary @cat.jpg) or multipart files (curl -F file=@cat.jpg)")
    if not body:
        raise Failure(400, "bad_request", "empty request body: send an image (curl --data-binary @cat.jpg) or "
                                          "multipart files (curl -F file=@cat.jpg)")
    return [Upload("body", body)]
