#!/usr/bin/env python3
"""Similar resolved conversations (domain/similar.py) at 100,000 conversations.

1. builds a :class:`SimilarityIndex` of ``--docs`` (100,000) synthetic resolved conversations —
   support matters of some thirty kinds, each told in varied words from word lists (products,
   names, places, small talk, a share of typos and of German, French and Spanish sentences) —
   with the evaluation set's reference conversations (tests/domain/similar_eval.json) mixed in;
   reports the build rate (conversations/s), the index's size and the process's RSS growth;
2. times adding 1,000 new conversations and replacing 1,000 indexed ones (a re-resolve);
3. times queries: the evaluation set's queries, 1,000 random new-customer texts and 100 long
   ones (the most a conversation's text can be), p50/p99/max; the verdict is against "a query
   over 100,000 answers in well under a second": p99 under 250 ms. It also gives, for the
   evaluation queries, how often the first hit is of the query's topic (the synthetic
   conversations of that topic count, not only the reference);
4. ``SimilarConversations.refresh`` from a real store (SQLite in a temp dir; ``--postgres-url``
   for a fresh PostgreSQL database too) holding ``--store-docs`` (20,000) resolved
   conversations: the first load, a refresh with nothing changed, one after 10 more are
   resolved, and a whole ``similar_to`` of a new conversation.

Usage (with the venv's python)::

    python -m benchmarks.similar_query [--docs 100000] [--store-docs 20000] [--quick]
                                       [--postgres-url [URL]] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from benchmarks._common import PgDatabase, code_version
from frontdesk.domain.conversations import resolve
from frontdesk.domain.similar import (
    SimilarConversations,
    SimilarityIndex,
    conversation_document,
    query_document,
)
from frontdesk.storage.db import Store
from frontdesk.storage.models import Contact, Conversation, Message, core_table

EVAL = Path(__file__).resolve().parent.parent / "tests" / "domain" / "similar_eval.json"
TARGET_P99 = 0.250
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# --- synthetic conversations ------------------------------------------------------------------

_PRODUCTS = """kettle, toaster, blender, lamp, sofa, cushion, jacket, coat,
boots, sneakers, backpack, tent, sleeping bag, headphones, speaker, charger, cable, phone case,
watch, bracelet, necklace, scarf, gloves, hat, mug, teapot, frying pan, knife set, cutting board,
vase, rug, curtains, duvet, pillow, towel, bathrobe, desk chair, bookshelf, monitor, keyboard,
mouse, printer, camera, tripod, bicycle, helmet, yoga mat, dumbbells, running shoes, swimsuit,
sunglasses, wallet, handbag, suitcase, umbrella, candle, plant pot, coffee grinder,
espresso machine, water bottle, lunch box, drill, screwdriver, ladder, paint brush, puzzle,
board game, teddy bear, stroller, car seat, dog bed, cat tree, aquarium, guitar, ukulele"""
PRODUCTS = [p.strip() for p in _PRODUCTS.split(",")]
_COLOURS = "black white red blue green grey navy beige pink yellow olive burgundy silver"
COLOURS = _COLOURS.split()
_NAMES = """Anna Ben Chloe David Emma Farid Grace Hugo Ines Jonas Karin Leo Maria Nils Olga Pablo
Quinn Rosa Sven Tara Umar Vera Wim Xenia Yusuf Zoe Lukas Sofia Mateo Elif Noah Mia Ali Lea Tom
Julia Marco Sara Ivan Nora Omar Lina Felix Clara Hannah Oscar Amir Eva Jan Ada"""
NAMES = _NAMES.split()
_CITIES = """Leeds Bristol Berlin Hamburg Lyon Nantes Madrid Seville Utrecht Ghent Porto Dublin
Cardiff Glasgow Munich Cologne Lille Bilbao Valencia Antwerp Bordeaux Vienna Zurich Oslo"""
CITIES = _CITIES.split()
SMALL_TALK = [
    "Hope you are having a good week.", "Sorry for the long message.",
    "I have been a loyal customer for years.", "My neighbour recommended your shop.",
    "I'm writing from my phone so excuse the typos.", "It was meant to be a present.",
    "I need this sorted before the weekend.", "Your chat was closed so I'm emailing.",
    "The weather here is awful, so I'm stuck inside.", "I tried calling but nobody answered.",
    "I'm travelling next month.", "This is my second message about it.",
]
FOREIGN = [
    "Ich habe ein Problem mit meiner Bestellung.", "Können Sie mir bitte helfen?",
    "J'ai un problème avec ma commande.", "Merci de me répondre rapidement.",
    "Tengo un problema con mi pedido.", "Gracias por su ayuda.",
    "Ik heb een probleem met mijn bestelling.", "Vielen Dank im Voraus.",
]


@dataclass(frozen=True)
class Topic:
    name: str
    subjects: tuple[str, ...]
    sentences: tuple[str, ...]
    notes: tuple[str, ...]
    tags: tuple[str, ...]


def _t(name: str, subjects: str, sentences: str, notes: str, tags: str) -> Topic:
    return Topic(name, tuple(subjects.split("|")), tuple(sentences.split("|")),
                 tuple(notes.split("|")), tuple(tags.split()))


TOPICS = [
    _t("refund_not_received", "Refund missing|Where is my refund?|Money not back|Refund status",
       "I returned the {product} {days} days ago and the refund has not arrived."
       "|The return was confirmed but my card was not credited."
       "|You promised a refund for the {product} but I have not seen it."
       "|My bank says no payment came from you.",
       "Refund sent to the original card; 5-10 business days.|Found the refund stuck; re-issued."
       "|Sent the refund reference so the bank can trace it.", "refund returns billing"),
    _t("password_reset", "Can't log in|Password reset not working|Locked out|Login trouble",
       "The password reset email never arrives.|I forgot my password and the link expired."
       "|It says my password is wrong.|I cannot sign in to my account since {day}.",
       "Reset link was in spam; sent a new one.|Unlocked the account after too many attempts."
       "|Cleared the old session; customer logged in.", "login account"),
    _t("parcel_late", "Order not arrived|Parcel late|Delivery delayed|Where is my package?",
       "My {product} was due on {day} and has not been delivered."
       "|Tracking has shown in transit for {days} days.|The courier says the parcel is lost."
       "|I paid for express shipping to {city} and still nothing.",
       "Carrier lost the parcel; reshipped by express.|Parcel was held at the depot; released."
       "|Opened an investigation with the carrier.", "shipping delivery"),
    _t("damaged_item", "Item broken|Arrived damaged|Damaged in transit|Cracked on arrival",
       "The {product} arrived broken.|The box was crushed and the {product} is cracked."
       "|One side of the {product} is dented.|I attached photos of the damage.",
       "Sent a free replacement.|Refunded the damaged item; no return needed."
       "|Asked for photos and sent a new one.", "damaged replacement"),
    _t("invoice_vat", "Invoice needed|VAT invoice|Receipt for my order|Company invoice",
       "I need an invoice with VAT for my company.|Please put our VAT number on the invoice."
       "|Can you send a receipt for the {product}?|Our accounting needs a proper invoice.",
       "Sent a VAT invoice as PDF.|Added the company name and VAT ID to the invoice.",
       "billing invoice"),
    _t("change_address", "Change address|Wrong address|Update shipping address",
       "I entered my old address by mistake.|Please send the {product} to {city} instead."
       "|Can you change the delivery address before it ships?",
       "Updated the address before packing.|Too late to change; redirected with the carrier.",
       "shipping address"),
    _t("cancel_subscription", "Cancel subscription|Stop my plan|End membership",
       "Please cancel my monthly subscription.|I keep getting charged for the premium plan."
       "|How do I stop the subscription renewing?",
       "Cancelled at the end of the billing period.|Cancelled and refunded the last charge.",
       "subscription billing"),
    _t("app_crash", "App crashes|App not working|Bug in the app|App freezes",
       "The app crashes when I open it.|Since the update the app freezes on start."
       "|The app closes itself on my {phone}.|Reinstalling the app did not help.",
       "Known bug fixed in the next version.|Clearing the app cache fixed it.", "bug app"),
    _t("discount_code", "Discount code invalid|Voucher not working|Promo code problem",
       "The discount code says invalid at checkout.|My voucher is not accepted."
       "|The promo code from the newsletter does not apply to the {product}.",
       "Code excluded sale items; applied it manually.|Code had expired; issued a new one.",
       "promo checkout"),
    _t("account_deletion", "Delete my account|GDPR request|Remove my data",
       "Please delete my account and personal data.|I want my data erased under the GDPR."
       "|Close my account permanently.",
       "Erased the account after verifying the email.|Deleted the data; kept invoices by law.",
       "privacy gdpr"),
    _t("sizes", "Size question|Which size?|Fit of the {product}",
       "Does the {product} come up small?|I am usually a medium.|What are the measurements?",
       "Sent the size chart.|Recommended one size up.", "sizing question"),
    _t("opening_hours", "Opening hours|Shop open on Sunday?|Holiday hours",
       "Is your shop in {city} open on Sunday?|What are your hours at Christmas?",
       "Sent the opening hours.|Gave the holiday hours of the {city} shop.", "stores"),
    _t("gift_wrap", "Gift wrapping|Gift message|Wrap as a present",
       "Can you wrap the {product} as a present?|Please add a card saying happy birthday.",
       "Added gift wrap and a card.", "gift"),
    _t("loyalty", "Loyalty points|Points missing|Redeem points",
       "My points for the last order are missing.|How do I redeem my points?",
       "Added the missing points.|Explained how to redeem.", "loyalty"),
    _t("warranty", "Warranty question|Guarantee|Repair under warranty",
       "How long is the warranty on the {product}?|The {product} stopped working after a year.",
       "Confirmed two years of warranty; arranged a repair.", "warranty"),
    _t("stock", "Back in stock?|Restock|Sold out",
       "When will the {colour} {product} be back in stock?|The {product} is sold out in my size.",
       "Added to the restock alert.|Restock expected next month.", "stock"),
    _t("price_match", "Price match|Cheaper elsewhere|Price drop",
       "Another shop sells the {product} for less.|The price dropped a day after I bought it.",
       "Price match approved.|Refunded the difference.", "pricing"),
    _t("gift_card", "Gift card balance|Gift card not working",
       "How much is left on my gift card?|The gift card is not accepted online.",
       "Checked and sent the balance.|Activated the gift card.", "giftcard"),
    _t("wholesale", "Wholesale enquiry|Bulk order|Corporate order",
       "We would like to order 200 {product}s for our staff.|Do you offer wholesale prices?",
       "Sent the wholesale price list.|Passed to the B2B team.", "b2b"),
    _t("feedback", "Thank you|Great service|Feedback",
       "The staff in your {city} shop were wonderful.|I love the new {product}.",
       "Passed the feedback on.", "feedback"),
    _t("newsletter", "Too many emails|Newsletter|Unsubscribe newsletter",
       "You send me too many newsletters.|Please stop the marketing emails.",
       "Set the newsletter to monthly.|Unsubscribed from marketing.", "marketing"),
    _t("payment_failed", "Payment declined|Card refused|Payment error",
       "My card was declined at checkout.|The payment failed but money was taken."
       "|PayPal shows an error when I pay.",
       "Bank blocked the payment; customer retried.|Released the pending authorisation.",
       "payment checkout"),
    _t("double_charge", "Charged twice|Double payment|Duplicate charge",
       "I was charged twice for one order.|There are two payments on my statement.",
       "Refunded the duplicate charge.|The second was a pending hold; it dropped off.",
       "billing refund"),
    _t("exchange", "Exchange size|Swap for another colour|Exchange request",
       "Can I exchange the {product} for a bigger size?|I would like the {colour} one instead.",
       "Sent an exchange label.|Shipped the new size on receipt of the return.", "returns"),
    _t("missing_item", "Item missing from parcel|Incomplete order|Part missing",
       "The parcel came without the {product}.|Only two of the three items were in the box."
       "|The screws for the {product} are missing.",
       "Sent the missing item.|Sent the missing parts.", "missing"),
    _t("wrong_item", "Wrong item sent|Not what I ordered|Wrong colour",
       "I ordered a {colour} {product} and received a different one.|You sent the wrong size.",
       "Sent the right item and a return label.", "wrong-item"),
    _t("two_factor", "Two-factor code|Verification code not arriving|2FA problem",
       "The verification code by SMS never arrives.|I changed my phone and lost the 2FA app.",
       "Reset two-factor after verifying identity.", "login security"),
    _t("change_email", "Change my email|New email address",
       "I want to change the email address on my account.|I no longer use my old email.",
       "Updated the email after confirmation.", "account"),
    _t("preorder", "Pre-order date|When does my pre-order ship?",
       "When will my pre-ordered {product} ship?|The release date has passed.",
       "Gave the new release date.|Pre-order shipped today.", "preorder"),
    _t("website_error", "Website error|Checkout page broken|Error 500",
       "The website shows an error at checkout.|The page does not load in {browser}.",
       "Fixed a bug in the checkout page.|Cleared the cache; page loads.", "bug website"),
]
BROWSERS = ["Firefox", "Chrome", "Safari", "Edge"]
PHONES = ["iPhone", "Samsung", "Pixel", "Android tablet", "iPad"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


class Generator:
    """Varied texts of support conversations from the word lists above, reproducibly."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def fill(self, template: str) -> str:
        r = self.rng
        return template.format(product=r.choice(PRODUCTS), colour=r.choice(COLOURS),
                               city=r.choice(CITIES), days=r.randint(2, 30), day=r.choice(DAYS),
                               phone=r.choice(PHONES), browser=r.choice(BROWSERS))

    def typo(self, text: str) -> str:
        """A few words with two letters swapped, as hurried customers type."""
        words = text.split(" ")
        for i, w in enumerate(words):
            if len(w) > 4 and w.isalpha() and self.rng.random() < 0.04:
                j = self.rng.randrange(1, len(w) - 2)
                words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        return " ".join(words)

    def message(self, topic: Topic) -> tuple[str, list[str]]:
        r = self.rng
        parts = [r.choice(("Hi,", "Hello,", "Dear team,", "Good morning,", "Hey", "Hallo,",
                           "Bonjour,", "Hola,", ""))]
        if r.random() < 0.3:
            parts.append(r.choice(SMALL_TALK))
        for sentence in r.sample(topic.sentences, r.randint(1, min(3, len(topic.sentences)))):
            parts.append(self.fill(sentence))
        if r.random() < 0.15:
            parts.append(r.choice(FOREIGN))
        if r.random() < 0.3:
            parts.append(f"Order {r.randint(10000, 99999)}.")
        parts.append(r.choice(("Thanks,", "Regards,", "Cheers,", "Best,", "")) + " "
                     + r.choice(NAMES))
        texts = [self.typo(" ".join(p for p in parts if p))]
        if r.random() < 0.3:  # a follow-up
            texts.append(self.typo(self.fill(r.choice(topic.sentences)) + " "
                                   + r.choice(SMALL_TALK)))
        return self.fill(r.choice(topic.subjects)), texts

    def resolved(self) -> tuple[str, str, list[str], str, list[str]]:
        """A resolved conversation: topic name, subject, customer texts, note, tags."""
        r = self.rng
        topic = r.choice(TOPICS)
        subject, texts = self.message(topic)
        note = self.fill(r.choice(topic.notes))
        return topic.name, subject, texts, note, list(topic.tags)

    def query(self) -> str:
        topic = self.rng.choice(TOPICS)
        subject, texts = self.message(topic)
        return query_document(subject, texts)

    def long_query(self) -> str:
        topic = self.rng.choice(TOPICS)
        subject, _ = self.message(topic)
        texts = [" ".join(self.message(topic)[1][0] for _ in range(15)) for _ in range(3)]
        return query_document(subject, texts)


# --- measuring ---------------------------------------------------------------------------------

def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


def load_eval() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EVAL.read_text(encoding="utf-8"))
    return data


def build(count: int, seed: int, data: dict[str, Any]) -> tuple[SimilarityIndex, dict[int, str],
                                                                  float, float]:
    """The index of ``count`` synthetic conversations with the references mixed in evenly."""
    gen = Generator(seed)
    index = SimilarityIndex()
    topic_of: dict[int, str] = {}
    references = data["topics"]
    every = max(1, count // (len(references) + 1))
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    ref = 0
    for key in range(1, count + 1):
        if key % every == 0 and ref < len(references):
            r = references[ref]["reference"]
            index.add(key, conversation_document(r["subject"], [r["text"]],
                                                 r["resolution_note"], r["tags"]))
            topic_of[key] = references[ref]["id"]
            ref += 1
            continue
        name, subject, texts, note, tags = gen.resolved()
        index.add(key, conversation_document(subject, texts, note, tags))
        topic_of[key] = name
    seconds = time.perf_counter() - started
    gc.collect()
    return index, topic_of, seconds, rss_mb() - before


def time_queries(index: SimilarityIndex, texts: list[str]) -> list[float]:
    times = []
    for text in texts:
        started = time.perf_counter()
        index.query(text, limit=3)
        times.append(time.perf_counter() - started)
    return times


def line(label: str, times: list[float]) -> str:
    p50, p99, worst = percentiles(times)
    return (f"  {label:<34} n={len(times):>5}  p50 {p50 * 1000:7.2f} ms  "
            f"p99 {p99 * 1000:7.2f} ms  max {worst * 1000:7.2f} ms")


def index_part(args: argparse.Namespace, data: dict[str, Any]) -> bool:
    print(f"building an index of {args.docs:,} resolved conversations ...")
    index, topic_of, seconds, grown = build(args.docs, args.seed, data)
    print(f"  built in {seconds:.1f} s: {args.docs / seconds:,.0f} conversations/s; "
          f"index ~{index.approximate_bytes() / 1e6:.0f} MB (its structures), "
          f"RSS grew {grown:.0f} MB")

    gen = Generator(args.seed + 1)
    adds = []
    for key in range(args.docs + 1, args.docs + 1001):
        _, subject, texts, note, tags = gen.resolved()
        doc = conversation_document(subject, texts, note, tags)
        started = time.perf_counter()
        index.add(key, doc)
        adds.append(time.perf_counter() - started)
    replaces = []
    rng = random.Random(args.seed)
    for key in rng.sample([k for k in range(1, args.docs) if k not in topic_of
                           or topic_of[k] not in {t["id"] for t in data["topics"]}], 1000):
        _, subject, texts, note, tags = gen.resolved()
        doc = conversation_document(subject, texts, note, tags)
        started = time.perf_counter()
        index.add(key, doc)
        replaces.append(time.perf_counter() - started)
    print("incremental:")
    print(line("add a new conversation", adds))
    print(line("replace an indexed one", replaces))

    eval_queries = [(t["id"], query_document(q.get("subject", ""), [q["text"]]))
                    for t in data["topics"] for q in t["queries"]]
    random_queries = [gen.query() for _ in range(1000)]
    long_queries = [gen.long_query() for _ in range(100)]
    time_queries(index, random_queries[:50])  # warm the word cache as a running daemon has
    eval_times = time_queries(index, [q for _, q in eval_queries])
    random_times = time_queries(index, random_queries)
    long_times = time_queries(index, long_queries)
    print(f"queries over {len(index):,} conversations (limit 3):")
    print(line("evaluation set's queries", eval_times))
    print(line("random new-customer texts", random_times))
    print(line(f"long texts (~{statistics.mean(map(len, long_queries)) / 1000:.1f} kB)",
               long_times))
    everything = eval_times + random_times + long_times
    _, p99, _ = percentiles(everything)
    right = sum(1 for topic, q in eval_queries
                if (found := index.query(q, limit=1)) and topic_of.get(found[0][0]) == topic)
    print(f"  evaluation queries whose first hit is of their topic: {right}/{len(eval_queries)}")
    ok = p99 < TARGET_P99
    print(f"verdict: p99 of all queries {p99 * 1000:.1f} ms over {len(index):,} conversations "
          f"(target < {TARGET_P99 * 1000:.0f} ms): {'PASS' if ok else 'FAIL'}")
    return ok


# --- refresh from a store ------------------------------------------------------------------------

async def fill_store(store: Store, count: int, extra: int, seed: int) -> tuple[list[int], float]:
    """``count`` resolved conversations and ``extra`` open ones (their ids returned), each with
    its customer's messages and a staff reply, bulk-inserted."""
    gen = Generator(seed)
    started = time.perf_counter()
    async with store.session() as s:
        contact = Contact(name="Ada", created_at=NOW, updated_at=NOW, tags={})
        s.add(contact)
        await s.flush()
        contact_id = contact.id
    chunk = 2000
    conv_table, msg_table = core_table(Conversation), core_table(Message)
    open_ids = []
    for first in range(1, count + extra + 1, chunk):
        conversations, messages = [], []
        for cid in range(first, min(first + chunk, count + extra + 1)):
            _, subject, texts, note, tags = gen.resolved()
            resolved = cid <= count
            at = NOW - timedelta(days=30) + timedelta(seconds=cid)
            conversations.append({
                "id": cid, "status": "resolved" if resolved else "open", "priority": "normal",
                "subject": subject, "channel": "email", "contact_id": contact_id,
                "created_at": at, "updated_at": at, "escalation_level": 0,
                "resolved_at": at if resolved else None, "tags": tags if resolved else [],
                "resolution_note": note if resolved else None, "sla_state": {}})
            if not resolved:
                open_ids.append(cid)
            for i, text in enumerate(texts):
                messages.append({"conversation_id": cid, "direction": "in", "author": "customer",
                                 "channel": "email", "subject": subject, "text": text,
                                 "created_at": at + timedelta(minutes=i), "headers": {}})
            messages.append({"conversation_id": cid, "direction": "out", "author": "staff",
                             "channel": "email", "subject": subject, "text": note,
                             "created_at": at + timedelta(hours=1), "headers": {}})
        async with store.session() as s:
            await s.execute(insert(conv_table), conversations)
            await s.execute(insert(msg_table), messages)
    return open_ids, time.perf_counter() - started


async def refresh_part(url: str, label: str, count: int, seed: int) -> None:
    store = Store(url)
    try:
        await store.ensure_schema()
        open_ids, filled = await fill_store(store, count, 11, seed)
        print(f"{label}: {count:,} resolved conversations stored in {filled:.1f} s")
        finder = SimilarConversations()
        started = time.perf_counter()
        async with store.reader() as s:
            await finder.refresh(s)
        first = time.perf_counter() - started
        indexed = len(finder.index)
        started = time.perf_counter()
        async with store.reader() as s:
            await finder.refresh(s)
        idle = time.perf_counter() - started
        async with store.session() as s:
            for n, cid in enumerate(open_ids[:10]):
                c = (await s.execute(select(Conversation).where(Conversation.id == cid)))\
                    .scalar_one()
                await resolve(s, c, actor="bench", now=NOW + timedelta(minutes=n),
                              note="Resolved during the benchmark.")
        started = time.perf_counter()
        async with store.reader() as s:
            await finder.refresh(s)
        incremental = time.perf_counter() - started
        async with store.reader() as s:
            c = (await s.execute(select(Conversation).where(Conversation.id == open_ids[10])))\
                .scalar_one()
            started = time.perf_counter()
            hits = await finder.similar_to(s, c)
            whole = time.perf_counter() - started
        print(f"  first refresh (load and index all): {first:.2f} s "
              f"({count / first:,.0f} conversations/s), {indexed:,} indexed")
        print(f"  refresh with nothing changed: {idle * 1000:.1f} ms")
        print(f"  refresh after 10 more were resolved: {incremental * 1000:.1f} ms")
        print(f"  similar_to a new conversation (refresh, its texts, query, checks): "
              f"{whole * 1000:.1f} ms, {len(hits)} hits")
    finally:
        await store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--store-docs", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true",
                        help="10,000 conversations in the index and 2,000 in the store")
    parser.add_argument("--postgres-url", nargs="?", const=os.environ.get(
        "FRONTDESK_TEST_POSTGRES_URL", ""), default=None,
        help="also measure the refresh on a fresh PostgreSQL database (default URL: "
             "$FRONTDESK_TEST_POSTGRES_URL); the user must be allowed to CREATE DATABASE")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.docs, args.store_docs = 10_000, 2_000
    print(f"frontdesk {code_version()}; load average {os.getloadavg()[0]:.2f}")
    data = load_eval()
    ok = index_part(args, data)
    work = Path(tempfile.mkdtemp(prefix="frontdesk-similar-"))
    try:
        asyncio.run(refresh_part(f"sqlite+aiosqlite:///{work}/frontdesk.db", "SQLite",
                                 args.store_docs, args.seed))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.postgres_url is not None:
        if not args.postgres_url:
            raise SystemExit("--postgres-url: no URL given and $FRONTDESK_TEST_POSTGRES_URL unset")
        database = PgDatabase(args.postgres_url)
        try:
            asyncio.run(refresh_part(database.url, "PostgreSQL", args.store_docs, args.seed))
        finally:
            database.drop()
    print(f"peak RSS of the process: {peak_rss_mb():.0f} MB")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
