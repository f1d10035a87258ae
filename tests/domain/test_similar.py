"""Similar resolved conversations (domain/similar.py): the lexical index finds the same problem
told in other words, with typos and in other languages, and nothing for an unrelated text; the
store-backed finder keeps in step with resolves and reopens made by another process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from frontdesk.domain.conversations import reopen, resolve
from frontdesk.domain.similar import (
    MAX_MESSAGE,
    SimilarConversations,
    SimilarHit,
    SimilarityIndex,
    conversation_document,
    customer_texts,
    query_document,
    terms,
)
from frontdesk.storage.db import Store
from frontdesk.storage.models import Contact, Conversation, Message

RESOLVED = {
    1: ("Refund not received after return",
        "I sent the jacket back two weeks ago and still have no refund on my card.",
        "The refund was issued on the day the return arrived; card refunds take 5-10 days.",
        ["refund"]),
    2: ("Forgot password, no reset email",
        "I forgot my password and the reset email never arrives, so I cannot log in.",
        "The reset mails were in the spam folder; sent a new link.", ["login"]),
    3: ("Parcel not delivered",
        "My parcel was due on Monday and tracking has shown it in transit for a week.",
        "The carrier lost it; reshipped by express.", ["shipping"]),
    4: ("Cancel my subscription",
        "Please cancel my monthly subscription, I don't want to be charged again.",
        "Cancelled at the end of the billing period.", ["subscription"]),
    5: ("Opening hours at Christmas",
        "Will your shop in the city centre be open on Boxing Day?",
        "Sent the holiday opening hours.", ["stores"]),
}


@pytest.fixture
def index() -> SimilarityIndex:
    idx = SimilarityIndex()
    for key, (subject, text, note, tags) in RESOLVED.items():
        idx.add(key, conversation_document(subject, [text], note, tags))
    return idx


def best(idx: SimilarityIndex, text: str) -> int | None:
    found = idx.query(text)
    return found[0][0] if found else None


def test_typos_and_paraphrases_find_the_right_conversation(index: SimilarityIndex) -> None:
    assert best(index, "refnud not recieved") == 1
    assert best(index, "Where is my money? I returned the coat a fortnight ago.") == 1
    assert best(index, "forgot my pasword") == 2
    assert best(index, "I am locked out, the password reset link doesn't come") == 2
    assert best(index, "my package never arrived, tracking stuck") == 3
    assert best(index, "stop my membership, I keep getting charged every month") == 4
    assert best(index, "I want to end my subscribtion") == 4


def test_other_languages_find_the_english_conversation(index: SimilarityIndex) -> None:
    assert best(index, "Ich habe die Ware zurückgeschickt, aber keine Rückerstattung bekommen.") \
        == 1
    assert best(index, "J'ai oublié mon mot de passe et je ne peux pas me connecter.") == 2
    assert best(index, "Mi paquete no ha llegado y el seguimiento no cambia.") == 3
    assert best(index, "Ich möchte mein Abo kündigen.") == 4
    assert best(index, "Je souhaite résilier mon abonnement.") == 4


def test_an_unrelated_text_finds_nothing(index: SimilarityIndex) -> None:
    assert index.query("The quarterly board meeting moves to the third floor.") == []
    assert index.query("Volcanic soil makes the grapes unusually sweet.") == []
    assert index.query("hello, thanks, regards") == []  # only greetings and stop words
    assert index.query("") == []


def test_scores_best_first_limit_and_exclude(index: SimilarityIndex) -> None:
    found = index.query("refund for my return, money not back on my card", limit=5)
    assert found[0][0] == 1
    scores = [s for _, s in found]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s <= 1 for s in scores)
    assert index.query("refund for my return", limit=0) == []
    assert 1 not in [k for k, _ in index.query("refund for my return", exclude=[1])]
    # the text itself scores (nearly) 1
    subject, text, note, tags = RESOLVED[3]
    [(key, score), *_] = index.query(conversation_document(subject, [text], note, tags))
    assert key == 3 and score > 0.99


def test_add_replaces_a_key_and_discard_forgets_it(index: SimilarityIndex) -> None:
    assert len(index) == 5
    index.add(5, "The discount code from the newsletter is invalid at checkout.")
    assert len(index) == 5
    assert best(index, "opening hours at Christmas") is None
    assert best(index, "my voucher code does not work") == 5
    index.discard(5)
    index.discard(5)  # nothing to forget: no error
    assert len(index) == 4 and 5 not in index
    assert best(index, "my voucher code does not work") is None
    with pytest.raises(ValueError):
        index.add(-1, "refund")


def test_a_word_the_index_does_not_know_is_not_forced_onto_another() -> None:
    idx = SimilarityIndex()
    idx.add(1, "Question about gift wrapping for a grandmother's present.")
    # "grandfather" is not a typo of "grandmother", nor "plants" of French "plante" (crash)
    assert idx.query("grandfather") == []
    idx.add(2, "The app crashes at start.")
    assert idx.query("watering plants") == []


def test_words_are_folded_stemmed_and_mapped_to_concepts() -> None:
    assert terms("Rückerstattung remboursement reembolso refunded") == ["refund"] * 4
    assert terms("mot de passe Passwort contraseña") == ["password"] * 3
    assert terms("Hello, thanks! Order 12345") == ["order"]  # greetings and numbers dropped
    assert terms("shipping shipped ships") == ["ship"] * 3


def test_documents() -> None:
    long_text = "word " * 2000
    doc = query_document("Parcel late", ["first message", long_text, "third", "fourth"])
    assert doc.startswith("Parcel late\nfirst message\n")
    assert "fourth" not in doc and len(doc) <= 2 * MAX_MESSAGE + 100
    resolved = conversation_document("Subject", ["text"], "what solved it", ["billing:vat"])
    assert resolved == "Subject\ntext\nwhat solved it\nbilling vat"
    assert conversation_document("", [], None, []) == ""


def test_hit_view_is_the_similar_json_element() -> None:
    hit = SimilarHit(12, "FD-12", "Refund", "resolved", "Refunded by card", 0.43219)
    assert hit.view() == {"reference": "FD-12", "subject": "Refund", "status": "resolved",
                          "resolution_note": "Refunded by card", "score": 0.432}


# --- against the store -------------------------------------------------------------------------

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = Store(database_url)
    await s.ensure_schema()
    try:
        yield s
    finally:
        await s.dispose()


async def add_conversation(store: Store, subject: str, texts: Sequence[str], *,
                           status: str = "open", note: str | None = None,
                           tags: Sequence[str] = (), staff: str = "",
                           at: datetime = T0) -> int:
    async with store.session() as s:
        contact = Contact(name="Ada", created_at=at, updated_at=at, tags={})
        s.add(contact)
        await s.flush()
        c = Conversation(status=status, subject=subject, channel="email", contact_id=contact.id,
                         created_at=at, updated_at=at, escalation_level=0,
                         resolution_note=note, tags=list(tags),
                         resolved_at=at if status == "resolved" else None)
        s.add(c)
        await s.flush()
        for i, text in enumerate(texts):
            s.add(Message(conversation_id=c.id, direction="in", author="customer",
                          channel="email", subject=subject, text=text,
                          created_at=at + timedelta(minutes=i)))
        if staff:
            s.add(Message(conversation_id=c.id, direction="out", author="staff",
                          channel="email", text=staff, created_at=at + timedelta(hours=1)))
            s.add(Message(conversation_id=c.id, direction="in", author="staff", is_note=True,
                          channel="email", text=staff, created_at=at + timedelta(hours=1)))
        return c.id


async def test_customer_texts_are_the_customers_first_messages(store: Store) -> None:
    cid = await add_conversation(store, "Refund", ["one", "two", "three", "four"],
                                 staff="internal words")
    other = await add_conversation(store, "Other", [])
    async with store.session() as s:
        s.add(Message(conversation_id=other, direction="in", author="customer", channel="email",
                      text="> quoted history\nthe new part", text_new="the new part",
                      created_at=T0))
        s.add(Message(conversation_id=other, direction="in", author="customer", channel="email",
                      text="x" * (MAX_MESSAGE + 500), created_at=T0))
    async with store.reader() as s:
        texts = await customer_texts(s, [cid, other, 999])
        assert await customer_texts(s, []) == {}
    assert texts == {cid: ["one", "two", "three"], other: ["the new part", "x" * MAX_MESSAGE]}


async def test_similar_conversations_follow_resolves_and_reopens_of_another_process(
        store: Store, database_url: str) -> None:
    refund = await add_conversation(
        store, "Refund not received", ["I returned the shoes, where is my refund?"],
        status="resolved", note="Refund issued to the card; takes 5-10 days.", tags=["refund"])
    login = await add_conversation(
        store, "Cannot log in", ["I forgot my password and the reset email never comes."],
        staff="refund refund refund")  # staff's words and notes are not the problem's
    parcel = await add_conversation(
        store, "Parcel late", ["My parcel has not arrived, tracking stuck for a week."],
        status="resolved", note="Carrier lost it; reshipped.", tags=["shipping"])
    new = await add_conversation(store, "Password", ["pasword forgotten, no reset link"],
                                 at=T0 + timedelta(hours=3))

    finder = SimilarConversations()
    added: list[int] = []
    original_add = finder.index.add

    def spy(key: int, text: str) -> None:
        added.append(key)
        original_add(key, text)

    finder.index.add = spy  # type: ignore[method-assign]
    async with store.reader() as s:
        await finder.refresh(s)
        assert sorted(added) == [refund, parcel] and len(finder.index) == 2
        conversation = await s.get_one(Conversation, new)
        assert await finder.similar_to(s, conversation) == []  # the login one is not resolved

    other = Store(database_url)  # another process: the command line, the API
    try:
        async with other.session() as s:
            await resolve(s, await s.get_one(Conversation, login), actor="grace",
                          now=T0 + timedelta(hours=4), note="Reset mails were in spam.")
            await reopen(s, await s.get_one(Conversation, parcel), actor="grace",
                         now=T0 + timedelta(hours=4))
    finally:
        await other.dispose()

    added.clear()
    async with store.reader() as s:
        conversation = await s.get_one(Conversation, new)
        hits = await finder.similar_to(s, conversation)
    assert added == [login]  # only what changed was read again
    assert [h.view() for h in hits] == [{
        "reference": f"FD-{login}", "subject": "Cannot log in", "status": "resolved",
        "resolution_note": "Reset mails were in spam.", "score": round(hits[0].score, 3)}]
    assert parcel not in finder.index and refund in finder.index
    async with store.reader() as s:  # the parcel is not resolved any more: never listed
        hits = await finder.similar_to_text(s, "my parcel did not arrive")
        assert hits == []
        conversation = await s.get_one(Conversation, refund)  # itself excluded
        assert await finder.similar_to(s, conversation) == []


async def test_a_hit_changed_behind_the_index_is_checked_against_the_store(
        store: Store) -> None:
    first = await add_conversation(
        store, "Refund missing", ["The refund for my return has not arrived."],
        status="resolved", note="Refunded again.")
    second = await add_conversation(
        store, "Refund late", ["Still waiting for the refund of my returned boots."],
        status="resolved", note="Bank delay.")
    finder = SimilarConversations()
    async with store.reader() as s:
        await finder.refresh(s)
        assert {h.conversation_id for h in await finder.similar_to_text(
            s, "where is my refund")} == {first, second}
    async with store.session() as s:  # changed without a new updated_at, as an erasure does
        await s.execute(update(Conversation).where(Conversation.id == first)
                        .values(status="open"))
        await s.execute(update(Conversation).where(Conversation.id == second)
                        .values(subject="", resolution_note=None))
        await s.execute(update(Message).where(Message.conversation_id == second)
                        .values(text="", subject=""))
    async with store.reader() as s:
        assert await finder.similar_to_text(s, "where is my refund") == []
    assert first not in finder.index
    assert second in finder.index  # read again: nothing of it is left to match
