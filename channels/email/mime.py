"""Reading a mail's MIME tree in bounded time and memory, to any depth.

The stdlib's tree parser builds every part of a mail (100,000 tiny parts: seconds and
hundreds of MB of objects) and recurses once per level of nesting (~1,000 levels: a
RecursionError). So it never reads a mail as it came. A scanner first follows the MIME
structure the way ``email.feedparser`` does, in one pass and without building anything, and
plans the parser's input: cut at the boundary line that starts the part after the budget (the
parser takes the missing close boundary as a defect), and every entity nested deeper than
``_MAX_NESTING`` replaced by a placeholder part, itself planned (the same way) as the input of
a run of its own, whose tree is grafted where the placeholder was. The raw mail stays whole in
the journal.
"""

from __future__ import annotations

import re
import secrets
from collections import deque
from collections.abc import Sequence
from email import policy as email_policy
from email.feedparser import FeedParser
from email.message import Message
from email.parser import BytesParser
from typing import Any

_PARSER = BytesParser(policy=email_policy.compat32)

_MAX_NESTING = 16
"""How deep one run of the tree parser goes. It recurses once per level, and checks every line
against the boundaries of all the levels open above it: each line of a 3 MB body of short
lines costs about 3 times as much 15 levels down as at the top. Real mail (a forward of a
forward of a signed mail) stays well above this; deeper entities are grafted on, exactly as
the parser would have built them."""

_SEARCH_FACTOR = 10
"""When the parts read hold no text, up to this many times ``max_mime_parts`` more parts are
looked through (not built) for a text part."""

_DEEPER = "X-Frontdesk-Deeper"  # the header of a placeholder part
_DEEPER_BODY = "[frontdesk-deeper "  # the one line of one that has no headers (see adopt)
_STOP, _DEEP = -1, -2  # the scan stopped (a cut, a text found); it reached a too deep entity
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LAST_LINE_END = re.compile(rb"(?:\r\n|\r|\n)\Z")
_LAST_TEXT_LINE_END = re.compile(r"(?:\r\n|\r|\n)\Z")
_HEADER_RUN = re.compile(  # header lines as the feedparser's headerRE takes them, in a row
    rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*(?:\r\n|\r|\n))*"
    rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*\Z)?")
_DASH_OR_BLANK_LINE = re.compile(rb"(?<=\n)(?:--|[\r\n])|(?<=\r)(?:--|\r)")
_CONTENT_TYPE = re.compile(rb"content-type", re.IGNORECASE)
_CONTENT_TYPE_LINE = re.compile(rb"(?:^|(?<=[\r\n]))content-type:", re.IGNORECASE)
_CONTENT_DISPOSITION_LINE = re.compile(rb"(?:^|(?<=[\r\n]))content-disposition:",
                                       re.IGNORECASE)
_CONTINUED = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)?(?:[ \t][^\r\n]*(?:\r\n|\r|\n)?)*")
_CONTENT_HEADERS = re.compile(rb"content-", re.IGNORECASE)
_CONTAINER_HINT = re.compile(rb"multipart|message", re.IGNORECASE)
_NEVER_A_LINE = b"\n"  # stands for a boundary no line can match (not ASCII after RFC 2231)


class _Frame:
    """A container open in the scan, as in the feedparser: a multipart, a message/* part (whose
    one child is the message it holds) or a message/delivery-status (a child per block)."""

    __slots__ = ("boundary", "child", "digest", "kind")

    def __init__(self, kind: str, boundary: bytes = b"", digest: bool = False) -> None:
        self.kind = kind  # "multipart" | "message" | "report"
        self.boundary = boundary
        self.digest = digest  # a multipart/digest: its parts are message/rfc822 by default
        self.child = False  # one of its parts is being read: its boundary is an EOF matcher


class _Plan:
    """The input of one run of the tree parser: the mail, or an entity nested too deep in it."""

    __slots__ = ("cut", "data", "deeper", "digest", "key", "parts", "strip")

    def __init__(self, key: str, digest: bool) -> None:
        self.key = key  # the placeholder that stands for it in its parent's input
        self.digest = digest  # a part of a multipart/digest: message/rfc822 by default
        self.data = b""
        self.parts = 0  # the parts read, those of its deeper entities included
        self.cut = False  # the budget ran out in it: what follows the cut is not in ``data``
        self.deeper: list[_Plan] = []
        self.strip = False  # a multipart around it takes the line end off its last part


class _Scanner:
    """Follows one entity of a raw mail (the mail itself, or one nested too deep) through its
    MIME structure as ``email.feedparser`` reads it, and plans the tree parser's input for it.

    Linear in the input and never recursive: lines are skipped to the next that starts with
    ``--`` (or is blank, in a delivery-status), header blocks are matched whole with a regex,
    and only when a block may declare a container is its Content-Type read, by the stdlib's
    ``Message`` from the value as the parser would set it, so types and boundaries come out
    exactly as the tree parser reads them.
    ``outer`` are the EOF matchers (boundaries; None: a blank line) of the containers around
    the entity.
    """

    def __init__(self, data: bytes, start: int, plan: _Plan, *, budget: int,
                 outer: Sequence[bytes | None] = (), in_multipart: bool = False,
                 in_message: bool = False, lead: bytes = b"") -> None:
        self.data, self.n, self.start, self.plan = data, len(data), start, plan
        self.lead = lead  # a line its parent's headers gave back to it (see _given_back)
        self.budget = budget
        self.in_multipart = in_multipart  # the container around it is a multipart
        self.in_message = in_message  # it is inside a message/* part: not the body
        self.frames: list[_Frame] = []
        self.matchers: list[bytes | None] = []  # the feedparser's EOF matchers
        self.owner: dict[bytes, list[int]] = {}  # boundary -> its indexes in ``matchers``
        self.blank: list[int] = []  # the indexes of blank-line matchers
        self._found = [(0, -1), (0, -1)]  # (searched from, found at) of "\n--" and "\r--"
        for matcher in outer:
            self._push(matcher)
        self.pieces: list[bytes] = []
        self.copied = start  # data[start:copied] is planned (in pieces)
        # Where the entity nested too deep starts, its digest flag, whether it starts right
        # after its parent's headers (no blank line between: it has no headers of its own), and
        # the line those headers gave back to it.
        self.deep: tuple[int, bool, bool, bytes] = (start, False, False, b"")
        self.stopped = (start, plan.digest)  # where the cut stopped the scan
        self.searching = False  # after a cut: for a text part in the rest
        self.search = self.searched = 0
        self.text: bytes | None = None
        # The deeper entity whose last part is the parser's last one (``_last``) so far: the
        # next multipart whose part ends takes the line end before its boundary off it.
        self.last: _Plan | None = None

    # -- lines --

    def _line(self, q: int) -> tuple[int, int]:
        """(end of the content, start of the next line) of the line at ``q``."""
        m = _LINE_END.search(self.data, q)
        return (m.start(), m.end()) if m else (self.n, self.n)

    def _match(self, q: int, own: bytes | None = None) -> tuple[int, bool] | None:
        """The EOF matcher (the outermost) that the line at ``q`` matches, as (its index, the
        line is a close boundary); ``own`` is the boundary of a multipart reading its own lines
        (index ``len(matchers)``). None: an ordinary line."""
        data = self.data
        if q >= self.n:
            return None
        if data[q] in b"\r\n":
            return (self.blank[0], False) if self.blank else None
        if not data.startswith(b"--", q):
            return None
        content = data[q + 2 : self._line(q)[0]].rstrip(b" \t")
        best: tuple[int, bool] | None = None
        found = self.owner.get(content)
        if found:
            best = (found[0], False)
        if content.endswith(b"--"):
            found = self.owner.get(content[:-2])
            if found and (best is None or found[0] < best[0]):
                best = (found[0], True)
        if best is None and own is not None:
            if content == own:
                best = (len(self.matchers), False)
            elif content == own + b"--":
                best = (len(self.matchers), True)
        return best

    def _stop(self, p: int, own: bytes | None = None,
              end: int | None = None) -> tuple[int, tuple[int, bool] | None]:
        """The first line at or after ``p`` (before ``end``) that a matcher or ``own`` matches,
        and the match; (``end``, None) when there is none."""
        end = self.n if end is None else end
        if p >= end or (not self.owner and not self.blank and own is None):
            return end, None
        hit = self._match(p, own)
        if hit is not None:
            return p, hit
        q = self._line(p)[1]
        while q < end:
            if self.blank:
                m = _DASH_OR_BLANK_LINE.search(self.data, q, end)
                q = m.start() if m else end
            else:
                q = self._dash_line(q, end)
            hit = self._match(q, own) if q < end else None
            if hit is not None:
                return q, hit
            q = self._line(q)[1]
        return end, None

    def _dash_line(self, q: int, end: int) -> int:
        """The first line at or after ``q`` (a line start, not the first) that starts with
        ``--``, or ``end``. ``bytes.find`` is many times faster than a regex here; what it
        found is kept, so a mail is searched once."""
        best = end
        for index, needle in enumerate((b"\n--", b"\r--")):
            start, at = self._found[index]
            if not start <= q - 1 <= at:
                start, at = q - 1, self.data.find(needle, q - 1)
                at = self.n if at < 0 else at
                self._found[index] = (start, at)
            best = min(best, at + 1)
        return best

    def _push(self, boundary: bytes | None) -> None:
        index = len(self.matchers)
        self.matchers.append(boundary)
        if boundary is None:
            self.blank.append(index)
        else:
            self.owner.setdefault(boundary, []).append(index)

    def _pop(self) -> None:
        boundary = self.matchers.pop()
        if boundary is None:
            self.blank.pop()
        else:
            indexes = self.owner[boundary]
            indexes.pop()
            if not indexes:
                del self.owner[boundary]

    # -- the scan --

    def run(self) -> int:
        """Scan from the start: where the entity ends, ``_STOP`` at a cut, or ``_DEEP`` at an
        entity nested too deep (see ``deep``; call :meth:`adopt` once it is planned)."""
        return self._drive(self._enter(self.start, self.plan.digest, self.start))

    def adopt(self, child: _Plan, end: int, last: _Plan | None = None) -> int:
        """The entity nested too deep is planned, ending at ``end`` (-1: at a cut), ``last``
        holding the last part built: go on."""
        if self.deep[2]:  # header lines would be read as more of the parent's headers
            self.pieces.append(f"{_DEEPER_BODY}{child.key}]\r\n".encode())
        else:
            self.pieces.append(f"{_DEEPER}: {child.key}\r\n"
                               "Content-Type: application/octet-stream\r\n".encode())
        self.plan.deeper.append(child)
        self.plan.parts += child.parts - 1  # its root was counted here, as the placeholder
        if end < 0:
            self.plan.cut = True
            return _STOP
        self.copied, self.last = end, last
        return self._drive(end)

    def finish(self, end: int) -> None:
        """Set the plan's input, the entity ending at ``end`` (-1: at a cut)."""
        if self.plan.cut or end < 0:
            data = b"".join([self.lead, *self.pieces])
        elif self.start == 0 and self.copied == 0 and end == self.n:
            data = self.data  # nothing cut out: the mail as it came
        else:
            data = b"".join([self.lead, *self.pieces, self.data[self.copied : end]])
        self.plan.data = data

    def search_on(self, pos: int, limit: int) -> int:
        """Look for a text part (``text``) in the rest of the entity after a cut (``pos`` < 0)
        or after its deeper entity that ended at ``pos``, through at most ``limit`` parts:
        where the entity ends, or ``_STOP``."""
        self.searching, self.search = True, limit
        if pos < 0:
            p, digest = self.stopped
            pos = self._enter(p, digest, p)
        return self._drive(pos)

    def _drive(self, pos: int) -> int:
        while pos >= 0 and self.frames:
            frame = self.frames[-1]
            if frame.kind == "multipart":
                pos = self._multipart(frame, pos)
            elif frame.kind == "message":  # its message has ended: so has it
                self.frames.pop()
            else:
                pos = self._report(pos)
        return pos

    def _multipart(self, frame: _Frame, pos: int) -> int:
        if frame.child:
            self._pop()
            frame.child = False
            if self.last is not None:
                self.last.strip, self.last = True, None
        q, hit = self._stop(pos, frame.boundary)
        if hit is None or hit[0] < len(self.matchers):  # the end of the input, or an outer
            self.frames.pop()                            # boundary: this multipart ends
            return q
        if hit[1]:  # its close boundary: the epilogue runs to the next outer boundary
            end, _ = self._stop(self._line(q)[1])
            self.frames.pop()
            return end
        start = self._line(q)[1]  # repeated boundary lines make no parts
        while start < self.n:
            again = self._match(start, frame.boundary)
            if again is None or again[0] != len(self.matchers):
                break
            start = self._line(start)[1]
        self._push(frame.boundary)
        frame.child = True
        return self._enter(start, frame.digest, q)

    def _report(self, pos: int) -> int:
        """A block of a message/delivery-status ended at ``pos``: the blank line is read, and
        another block follows unless the part ends."""
        self._pop()  # the blank-line matcher of the block
        if pos < self.n and self._match(pos) is None:
            pos = self._line(pos)[1]
        if pos >= self.n or self._match(pos) is not None:
            self.frames.pop()
            return pos
        self._push(None)
        return self._enter(pos, False, pos)

    def _enter(self, p: int, digest: bool, cut: int) -> int:
        """A message (a part) starts at ``p``; ``cut`` is where to cut the input if the budget
        does not allow it. Returns where its parent goes on (or ``_STOP``, ``_DEEP``)."""
        glued, given = False, b""  # see ``deep``
        while True:
            if self.searching:
                self.searched += 1
                if self.searched > self.search:
                    return _STOP
            elif self.plan.parts >= self.budget:
                self.plan.cut = True
                self.pieces.append(self.data[self.copied : cut])
                self.stopped = (p, digest)
                return _STOP
            else:
                self.plan.parts += 1
                self.last = None
                if (len(self.frames) >= _MAX_NESTING and p < self.n
                        and self._match(p) is None):  # (an empty one is no deeper)
                    self.pieces.append(self.data[self.copied : p])
                    self.deep = (p, digest, glued, given)
                    return _DEEP
            run = _HEADER_RUN.match(self.data, p)
            run_end = run.end() if run else p
            q, hit = self._stop(p, end=run_end) if run_end > p else (p, None)
            if hit is not None:  # a boundary line that looks like a header ends the block
                body = head_end = q
            else:
                head_end = body = run_end
                if body < self.n and self._match(body) is None and self.data[body] in b"\r\n":
                    body = self._line(body)[1]  # the blank line after the headers
            kind, boundary, flag = self._kind(self.data[p:head_end], digest)
            if kind in ("report", "message"):  # it holds a message: read that next
                self.frames.append(_Frame(kind))
                if kind == "report":
                    self._push(None)
                given = _given_back(self.data[p:head_end])
                p, digest, cut, glued = body, False, body, body == head_end
                continue
            if kind == "multipart":
                self.frames.append(_Frame("multipart", boundary, digest=flag))
                return body
            end, _ = self._stop(body)
            if self.searching and flag and not self._in_message():
                self.text = self._strip(self.data[p:end], self._in_multipart())
                return _STOP
            return end

    def _kind(self, block: bytes, digest: bool) -> tuple[str, bytes, bool]:
        """("multipart", its boundary, it is a digest) or ("message" | "report" | "leaf", b"",
        it is an inline text/plain or text/html part (told only while searching))."""
        if self.searching:
            if not _CONTENT_HEADERS.search(block):
                return ("message", b"", False) if digest else ("leaf", b"", True)
        elif not _CONTENT_TYPE.search(block):
            return ("message", b"", False) if digest else ("leaf", b"", False)
        elif not _CONTAINER_HINT.search(block):
            return "leaf", b"", False
        headers = Message()  # with the two headers read here, as the parser would set them
        if digest:
            headers.set_default_type("message/rfc822")
        for name, pattern in (("Content-Type", _CONTENT_TYPE_LINE),
                              ("Content-Disposition", _CONTENT_DISPOSITION_LINE)):
            line = pattern.search(block)
            lines = _CONTINUED.match(block, line.end()) if line else None
            if line and lines:  # the first one: its value, and any continuation lines
                raw_value = block[line.end() : lines.end()].decode("ascii", "surrogateescape")
                headers.set_raw(name, raw_value.lstrip(" \t").rstrip("\r\n"))
        ctype = headers.get_content_type()
        maintype = ctype.partition("/")[0]
        if ctype == "message/delivery-status":
            return "report", b"", False
        if maintype == "message":
            return "message", b"", False
        if maintype == "multipart":
            value = headers.get_boundary()
            if value is not None:
                try:
                    boundary = value.encode("ascii", "surrogateescape")
                except UnicodeEncodeError:
                    boundary = _NEVER_A_LINE
                return "multipart", boundary, ctype == "multipart/digest"
        text = (ctype in ("text/plain", "text/html")
                and headers.get_content_disposition() != "attachment")
        return "leaf", b"", text

    def _in_multipart(self) -> bool:
        """Whether the innermost container around (message/* parts aside) is a multipart,
        which gives the line end before its boundary to the boundary."""
        return next((frame.kind == "multipart" for frame in reversed(self.frames)
                     if frame.kind != "message"), self.in_multipart)

    def _in_message(self) -> bool:
        return self.in_message or any(frame.kind != "multipart" for frame in self.frames)

    @staticmethod
    def _strip(data: bytes, in_multipart: bool) -> bytes:
        if in_multipart:
            m = _LAST_LINE_END.search(data, max(0, len(data) - 2))
            if m is not None:
                return data[: m.start()]
        return data


def _given_back(block: bytes) -> bytes:
    """The last line of a header block if the feedparser gives it back to the body: a "From "
    line that is not the first (that one is the mbox envelope line)."""
    body = block.rstrip(b"\r\n")
    start = max(body.rfind(b"\n"), body.rfind(b"\r")) + 1
    return block[start:] if start and block.startswith(b"From ", start) else b""


def _plan(raw: bytes, max_parts: int) -> tuple[_Plan, list[_Scanner]]:
    """The plan of the mail (and, in it, of its entities nested too deep), made in one pass:
    the parts are counted in the order they come. When the budget runs out, also the scanners
    open at the cut (the innermost last), to look through the rest for text later."""
    nonce, count = secrets.token_hex(8), 0
    stack = [_Scanner(raw, 0, _Plan("", False), budget=max_parts)]
    pos = stack[0].run()
    while True:
        scanner = stack[-1]
        if pos == _DEEP:  # an entity nested too deep: a scanner of its own
            start, digest, _, lead = scanner.deep
            count += 1
            child = _Plan(f"{nonce}-{count}", digest)
            stack.append(_Scanner(
                raw, start, child, budget=scanner.budget - scanner.plan.parts + 1,
                outer=scanner.matchers, in_multipart=scanner._in_multipart(),
                in_message=scanner._in_message(), lead=lead))
            pos = stack[-1].run()
            continue
        scanner.finish(pos)
        if len(stack) == 1:
            return scanner.plan, (list(stack) if scanner.plan.cut else [])
        if pos < 0:  # the cut: every scanner open stops there
            for depth in range(len(stack) - 2, -1, -1):
                stack[depth].adopt(stack[depth + 1].plan, -1)
                stack[depth].finish(-1)
            for depth in range(1, len(stack)):  # as the parser's input ends, multiparts end
                stack[depth].plan.strip = any(frame.kind == "multipart" for outer in stack[:depth]
                                              for frame in outer.frames)
            return stack[0].plan, list(stack)
        stack.pop()
        pos = stack[-1].adopt(scanner.plan, pos, scanner.last or scanner.plan)


def later_text(rest: list[_Scanner], max_parts: int) -> Message | None:
    """After a cut, when the parts read hold no text: the first text part of the rest (looked
    through, not built, up to ``_SEARCH_FACTOR`` times ``max_parts`` parts)."""
    limit = _SEARCH_FACTOR * max_parts
    pos = _STOP
    for scanner in reversed(rest):
        pos = scanner.search_on(pos, limit)
        if scanner.text is not None:
            return _PARSER.parsebytes(scanner.text)  # one text part: nothing to bound
        limit -= scanner.searched
        if pos < 0 or limit <= 0:
            break
    return None


class _TooManyParts(Exception):
    pass


class _Factory:
    """The tree parser's message factory. The plan says how many parts the parser builds; this
    stops a parse that builds far more (a safety net: the plan should be exact)."""

    def __init__(self, limit: int, digest: bool) -> None:
        self.limit, self.digest, self.count = limit, digest, 0

    def __call__(self, policy: Any = email_policy.compat32) -> Message:
        self.count += 1
        if self.count > self.limit:
            raise _TooManyParts(f"the tree parser built more than {self.limit} parts")
        msg = Message(policy=policy)
        if self.digest and self.count == 1:  # a part of a multipart/digest, on its own
            msg.set_default_type("message/rfc822")
        return msg


def _parse_planned(plan: _Plan) -> Message:
    """The tree of a planned input, as ``BytesParser(policy=compat32).parsebytes`` builds it."""
    factory = _Factory(2 * plan.parts + 8, plan.digest)
    parser = FeedParser(factory, policy=email_policy.compat32)
    factory.count = 0  # FeedParser called it once to learn its signature
    text = plan.data.decode("ascii", "surrogateescape")
    for start in range(0, len(text), 8192):  # in the chunks BytesParser feeds
        parser.feed(text[start : start + 8192])
    root = parser.close()
    last = getattr(parser, "_last", None)
    if plan.strip and isinstance(last, Message):
        # What the multipart around the entity does to the last part built (in the parser):
        # the line end before its boundary is the boundary's.
        if last.get_content_maintype() == "multipart":
            if last.epilogue == "":
                last.epilogue = None
            elif last.epilogue is not None:
                last.epilogue = _LAST_TEXT_LINE_END.sub("", last.epilogue)
        else:  # (the payload as it was read: get_payload() decodes 8-bit text)
            payload = getattr(last, "_payload", None)
            if isinstance(payload, str):
                last.set_payload(_LAST_TEXT_LINE_END.sub("", payload))
    return root


class Tree:
    """A mail's MIME tree as far as it was read, and what was left out of it."""

    def __init__(self, root: Message) -> None:
        self.root = root
        self.parts = 0  # parts read
        self.cut = False  # parts beyond max_mime_parts were not read
        self.rest: list[_Scanner] = []  # the scanners open at the cut
        self.raw_text: str | None = None  # the structure could not be read: the raw body


def _placeholders(root: Message, keys: set[str],
                  slots: dict[str, tuple[list[Any], int]]) -> None:
    """Where the placeholders named ``keys`` sit in ``root`` (a payload list and an index)."""
    todo = [root] if keys else []
    while todo:
        payload = todo.pop().get_payload()
        if not isinstance(payload, list):
            continue
        for index, sub in enumerate(payload):
            if isinstance(sub, Message):
                key = sub.get(_DEEPER)
                body = sub.get_payload()
                if (key is None and not sub.keys() and isinstance(body, str)
                        and body.startswith(_DEEPER_BODY)):
                    key = body[len(_DEEPER_BODY) :].partition("]")[0]
                if key in keys:
                    slots[key] = (payload, index)
                else:
                    todo.append(sub)


def _surely_small(raw: bytes, limit: int) -> bool:
    """Whether the tree parser surely builds at most ``limit`` parts of ``raw`` (and so nests
    them no deeper), as most mail: the scan is then left out. Each part but the mail itself
    starts after a line that starts with ``--``, or is a message/* part's message (a part of a
    digest, or "message/" in its headers), or a block of a delivery-status."""
    dashes = raw.count(b"\n--") + raw.count(b"\r--") + raw.startswith(b"--")
    if 1 + 2 * dashes > limit:
        return False
    lower = raw.lower()  # (bytes methods: many times faster than a regex)
    return b"delivery-status" not in lower and 1 + 2 * dashes + lower.count(b"message/") <= limit


def read_tree(raw: bytes, max_parts: int) -> Tree:
    """The MIME tree of ``raw``, of at most ``max_parts`` parts (give or take a placeholder),
    nested to any depth, in time and memory bounded by the mail's size and ``max_parts``."""
    if _surely_small(raw, min(max_parts, _MAX_NESTING)):
        return Tree(_PARSER.parsebytes(raw))
    plan, rest = _plan(raw, max_parts)
    tree = Tree(_parse_planned(plan))
    tree.parts, tree.cut, tree.rest = plan.parts, plan.cut, rest
    slots: dict[str, tuple[list[Any], int]] = {}
    _placeholders(tree.root, {deep.key for deep in plan.deeper}, slots)
    queue = deque(plan.deeper)
    while queue:
        deep = queue.popleft()
        slot = slots.pop(deep.key, None)
        if slot is None:  # (the parser did not take the placeholder as a part)
            continue
        payload, index = slot
        payload[index] = sub = _parse_planned(deep)
        _placeholders(sub, {deeper.key for deeper in deep.deeper}, slots)
        queue.extend(deep.deeper)
    return tree
