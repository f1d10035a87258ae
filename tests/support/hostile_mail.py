"""Hostile mail of issue 14, built in code: the tests and ``benchmarks/abuse.py`` send the same."""

from __future__ import annotations

HEAD = ("From: Ada Lovelace <ada@example.org>\r\nTo: support@example.com\r\n"
        "Subject: {subject}\r\nMessage-ID: <{msgid}@example.org>\r\nMIME-Version: 1.0\r\n")


def many_parts_mail(parts: int = 100_000, nl: bytes = b"\r\n", msgid: str = "many") -> bytes:
    """The issue's mail: ~4 MB, a text part and then tiny PDF parts, ``parts`` in all."""
    head = (HEAD.format(subject="Scans", msgid=msgid)
            + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            + "--b\r\nContent-Type: text/plain\r\n\r\nHello, here are the scans.\r\n")
    part = b"--b\r\nContent-Type: application/pdf\r\n\r\nxy\r\n"
    raw = head.encode() + part * (parts - 1) + b"--b--\r\n"
    return raw.replace(b"\r\n", nl)


def attachments_mail(count: int) -> bytes:
    head = (HEAD.format(subject="Files", msgid="files")
            + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            + "--b\r\nContent-Type: text/plain\r\n\r\nThe files you asked for.\r\n")
    parts = "".join(f'--b\r\nContent-Type: application/pdf; name="f{i}.pdf"\r\n\r\n%PDF {i}\r\n'
                    for i in range(1, count + 1))
    return (head + parts + "--b--\r\n").encode()


def nested_mail(levels: int, text: str = "hello", boundary: str = "b{i}",
                msgid: str = "nested") -> bytes:
    """A multipart/mixed inside a multipart/mixed ... ``levels`` deep, ``text`` innermost."""
    out = [HEAD.format(subject=f"{levels} levels", msgid=msgid)]
    for i in range(levels):
        b = boundary.format(i=i)
        out.append(f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n--{b}\r\n')
    out.append(f"Content-Type: text/plain\r\n\r\n{text}\r\n")
    for i in reversed(range(levels)):
        out.append(f"--{boundary.format(i=i)}--\r\n")
    return "".join(out).encode()


def nested_forwards_mail(levels: int) -> bytes:
    """A forwarded mail forwarding a mail forwarding a mail ... ``levels`` deep."""
    out = [HEAD.format(subject="Fwd", msgid="fwd"),
           'Content-Type: multipart/mixed; boundary="top"\r\n\r\n',
           "--top\r\nContent-Type: text/plain\r\n\r\nSee the mail below.\r\n",
           "--top\r\n"]
    out += ["Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n"] * levels
    out.append("Content-Type: text/plain\r\n\r\nthe original words\r\n--top--\r\n")
    return "".join(out).encode()
