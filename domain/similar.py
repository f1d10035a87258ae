"""Similar resolved conversations: how the same problem was solved before.

When a conversation arrives, staff see up to three *resolved* conversations most like it, each
with its resolution note. Customers describe one problem in many words, with typos and in other
languages, and no model may be downloaded, so the finder is lexical, in pure Python, in memory:

* **Words** (:func:`terms`): lower-cased, accents folded (``Rückerstattung`` → ``ruckerstattung``),
  stop words of English, German, French, Spanish and Dutch dropped (greetings and "problem",
  "please" too), numbers dropped (order numbers say nothing about the problem), then a light
  suffix stripping shared by those languages (``refunded``/``refunds`` → ``refund``, ``arrive``/
  ``arrived`` → ``arriv``, ``Bestellungen`` → ``bestell``). Stems need not be real words; the
  same word's inflections only have to fall together.
* **Support vocabulary** (:data:`_CONCEPTS`): a small table of general support words in those
  languages mapped to one English concept (``Rückerstattung``, ``remboursement``, ``reembolso``,
  ``reimbursement`` → ``refund``; ``mot de passe`` → ``password``), so a German description meets
  the English conversation of the same problem. It is general vocabulary, not tuned to sentences.
* **Typos**: a query word of five letters or more that the index has never seen (and no concept
  knows) is taken for the concept word, or else the most frequent indexed word, one edit away:
  a letter missing, added or swapped with its neighbour (``refnud`` → ``refund``, ``pasword`` →
  ``password``, ``recieved`` → ``received``), or changed in words of eight letters or more, with
  the same first letter; candidates are found through their character trigrams. A corrected
  word counts a little less (:data:`CORRECTED`) than one written right. Words the index knows
  are taken as written.
* **Ranking**: candidates come from BM25 over postings lists (rarest words first; words in more
  than a tenth of the conversations (:data:`COMMON`) are not used to find candidates, and once
  :data:`CANDIDATES` are found later words only re-rank them); the best :data:`RESCORED` are
  then scored exactly.

**The score** (0..1) is the cosine similarity of the two texts' word vectors, each word weighted
by its rarity in the index (BM25's idf) times its count with BM25's saturation: 1.0 means the
same words in the same proportions, 0 nothing in common. The same problem told in other words
typically scores 0.1–0.4; a conversation below :data:`MIN_SCORE` is not listed at all, so an
unrelated text finds nothing. Scores are comparable within one query, and roughly across queries.

:class:`SimilarConversations` keeps a :class:`SimilarityIndex` of the resolved conversations in
step with the store incrementally, by ``updated_at``, so resolves made by another process (the
command line, the API) are picked up; and checks each hit against the store before listing it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import re
import sys
import time
import unicodedata
from array import array
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.storage.models import Conversation, Message

log = logging.getLogger(__name__)

# --- what represents a conversation ----------------------------------------------------------

MESSAGES = 3
"""A conversation is represented by its subject and its customer's first this many messages."""
MAX_MESSAGE = 2000
"""Characters kept of each message (the start says what the problem is; the rest is history)."""
MAX_NOTE = 1000
MAX_DOCUMENT = 6000


def _clip(text: str | None, limit: int) -> str:
    return (text or "").strip()[:limit]


def query_document(subject: str, customer_texts: Sequence[str]) -> str:
    """The text that stands for a new conversation: its subject and the customer's first
    :data:`MESSAGES` messages, each cut to :data:`MAX_MESSAGE` characters."""
    parts = [_clip(subject, MAX_MESSAGE)]
    parts += [_clip(t, MAX_MESSAGE) for t in customer_texts[:MESSAGES]]
    return "\n".join(p for p in parts if p)[:MAX_DOCUMENT]


def conversation_document(subject: str, customer_texts: Sequence[str],
                          resolution_note: str | None, tags: Sequence[str]) -> str:
    """The text that stands for a resolved conversation: as :func:`query_document`, plus the
    resolution note and the tags (staff's own words for the problem: ``billing:vat`` → ``billing
    vat``)."""
    tag_words = " ".join(re.sub(r"[-_:]+", " ", t) for t in tags)
    parts = [query_document(subject, customer_texts), _clip(resolution_note, MAX_NOTE), tag_words]
    return "\n".join(p for p in parts if p)


# --- words -----------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_SPECIAL_LETTERS = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "ł": "l", "đ": "d", "ı": "i",
                                  "ß": "ss", "þ": "th"})

_STOP_WORDS_OF: dict[str, str] = {
    "en": """
        a about above after again against ago all almost already also although always am an and
        another any anybody anyone anything anyway are aren around as at be because been before
        being below between both but by can cannot cant could couldn couldnt did didn didnt do
        does doesn doesnt doing don dont done down during each either else even ever every few
        for from further get gets getting got gotten had hadn has hasn hasnt have haven havent
        having he her here hers herself him himself his how however i if im in into is isn isnt
        it its itself ive just let lets ll me might more most much must mustn my myself need
        needs never no nor not nothing now of off often on once one only or other others our
        ours ourselves out over own per perhaps quite rather re really same shall shan she
        should shouldn since so some somebody someone something sometimes still such than that
        thats the their theirs them themselves then there these they thing things this those
        though through thus to too under until up upon us ve very via was wasn wasnt we were
        weren what whatever when where whether which while who whom whose why will with within
        without won wont would wouldn yet you youre your yours yourself yourselves want wanted
        wants like know let ask tell see look try tried trying said say says hope well able
        today yesterday tomorrow many several lot lots two three four five six seven eight nine
        ten fw fwd customer customers new old near show shows shown found find make made take
        taken come came go goes going gone went put give given gave way time good great lot bit
        little maybe ok okay yes sure back hi hello hey dear thanks thank thx regards kind best
        wishes cheers please pls plz sincerely greetings morning afternoon sir madam team help
        problem problems issue issues question questions""",
    "de": """
        aber alle allem allen aller alles als am an andere anderen auch auf aus bei bereits bin
        bis bist da damit dann das dass dem den denn der des dich die dies diese diesem diesen
        dieser dieses dir doch dort du durch ein eine einem einen einer eines er es etwas euch
        euer fur gegen gestern gewesen hab habe haben hat hatte hatten heute hier hin ich ihm
        ihn ihnen ihr ihre ihrem ihren ihrer im immer in ins ist ja jede jedem jeden jeder jedes
        jetzt kann kein keine keinem keinen keiner konnen konnte leider man mehr mein meine
        meinem meinen meiner mich mir mit muss musste nach nicht nichts noch nun nur ob oder
        ohne schon sehr sein seine seinem seinen seiner seit sich sie sind so soll sollte
        sondern sonst tage tagen uber um und uns unser unsere unter viel vom von vor war waren
        warum was weil weiter welche wenn wer werde werden wie wieder will wir wird wo wollen
        wurde wurden zu zum zur zwar zwischen aw wg hallo guten danke vielen bitte gruss grusse
        freundlichen liebe lieber geehrte geehrter herr frau mfg lg zwei drei vier funf kunde
        kunden""",
    "fr": """
        au aux avec ce ces cette celui dans de des du elle en et eux il ils je la le les leur
        leurs lui ma mais me meme mes moi mon ne nos notre nous on ou par pas pour qu que qui sa
        se ses son sur ta te tes toi ton tu un une vos votre vous ete etre avoir ai avons avez
        ont avais avait suis es est sommes etes sont etais etait fait faire plus tres bien aussi
        deja encore toujours jamais rien depuis quand comment pourquoi tout tous toute toutes
        cela ca ceci ici alors donc si non oui peut pouvez pourriez puis veux voudrais souhaite
        souhaiterais possible il y tr bonjour bonsoir merci cordialement salutations madame
        monsieur svp plait deux trois quatre cinq client clients""",
    "es": """
        al algo algun alguna algunas alguno algunos ante antes como con contra cual cuando del
        desde donde dos el ella ellas ellos entre era eran esa esas ese eso esos esta estaba
        estan estar este esto estos fue fueron ha han hace hacer hasta hay las lo los mas mi mis
        mucho muy nada ni nos nosotros otra otro para pero poco por porque quien ser sin sobre
        solo su sus tambien tanto tengo tiene tienen todavia todo todos tus uno unos usted
        ustedes ya yo quiero quisiera puedo puede pueden podrian podria rv hola gracias saludos
        buenos buenas dias tardes favor estimado estimados cuatro cinco cliente clientes""",
    "nl": """
        aan al alles als bij ben dat dan deze dit doen dus een er geen heb hebben heeft het hij
        hoe ik ja je jij kon maar meer men met mij mijn moet naar niet niets nog nu om omdat ons
        onze ook op over tot uit uw van veel voor want wat wel werd wie wij wil worden zal ze
        zelf zich zij zijn zo zonder steeds hoi bedankt dank groeten vriendelijke beste twee
        drie vijf klant klanten""",
}
"""Folded (accent-free) stop words per language, with greetings and support filler words."""
_STOP_WORDS = frozenset(w for words in _STOP_WORDS_OF.values() for w in words.split())

_CONCEPTS: dict[str, str] = {
    # concept: its words (folded: no accents, lower case); a phrase is words joined by spaces.
    # General support vocabulary of English, German, French, Spanish and Dutch.
    "refund": """refund refunds refunded refunding reimburse reimbursed reimbursement repayment
        money_back ruckerstattung rueckerstattung ruckerstattungen erstattung erstatten erstattet
        zuruckerstatten ruckzahlung geld_zuruck remboursement rembourser rembourse remboursee
        reembolso reembolsar reembolsado reembolsada terugbetaling terugbetalen terugbetaald
        geld_terug restitutie""",
    "return": """return returns returned returning send_back sent_back sending_back retour
        retoure retouren rucksendung rucksenden zuruckgeschickt zuruckschicken zurucksenden
        zuruckgesendet renvoyer renvoye renvoyee retourner retourne devolucion devolver devuelto
        devuelta devolvi retourneren geretourneerd terugsturen teruggestuurd""",
    "payment": """payment payments pay paid paying charge charged charges billed debit debited
        zahlung zahlungen bezahlt bezahlen abbuchung abgebucht belastet paiement paiements payer
        paye preleve prelevement debite pago pagos pagar pagado cobro cobrar cobrado betaling
        betalen betaald afgeschreven""",
    "money": "money geld argent dinero plata",
    "card": "card cards creditcard karte kreditkarte carte tarjeta kaart",
    "bank": "bank banks banque banco bankrekening",
    "password": """password passwords passcode pwd passwort kennwort mot_de_passe mdp contrasena
        clave wachtwoord""",
    "login": """login logins logon signin log_in logged_in logging_in sign_in signed_in
        signing_in log_on credentials anmelden anmeldung einloggen eingeloggt zugangsdaten
        connexion connecter connecte identifiants iniciar_sesion inicio_de_sesion sesion
        credenciales inloggen ingelogd aanmelden inloggegevens""",
    "reset": """reset resets resetting zurucksetzen zuruckgesetzt reinitialiser
        reinitialisation reinitialise restablecer restablecerla restablecido resetear""",
    "forget": """forgot forgotten forget forgetting vergessen oublie oubliee oublier olvide
        olvidado olvidada olvidar vergeten""",
    "blocked": """blocked locked lock gesperrt sperre gesperrte bloque bloquee bloqueado
        bloqueada geblokkeerd""",
    "account": """account accounts profile profiles konto kundenkonto benutzerkonto profil
        compte comptes cuenta cuentas perfil""",
    "email": "email emails mail mails courriel courriels correo correos correo_electronico",
    "spam": "spam junk pourriel indeseado",
    "link": "link links lien liens enlace enlaces",
    "parcel": """parcel parcels package packages packet shipment shipments consignment paket
        pakete packchen sendung colis paquet paquets paquete paquetes bulto pakket pakketje
        pakje""",
    "ship": """ship ships shipped shipping dispatch dispatched versand versendet verschickt
        versenden verschicken expedition expedie expedier expediee envio envios enviado enviar
        verzending verzonden verzenden""",
    "carrier": """carrier carriers courier couriers zusteller paketdienst transporteur
        transportista mensajero vervoerder bezorger""",
    "deliver": """deliver delivers delivered delivering delivery deliveries lieferung liefern
        geliefert lieferzeit zustellung zugestellt livraison livrer livre livree entrega
        entregar entregado entregada levering leveren geleverd bezorging bezorgen bezorgd""",
    "arrive": """arrive arrives arrived arriving arrival ankommen angekommen eingetroffen
        ankunft arriver arrive arrivee arrivees llegar llegado llegada llego aankomen
        aangekomen""",
    "receive": """receive receives received receiving erhalten bekommen recu recue recevoir
        recibir recibido recibida ontvangen""",
    "track": """track tracking tracked sendungsverfolgung sendungsnummer verfolgung suivi
        seguimiento rastreo""",
    "late": """late delayed delay delays verspatet verspatung verzogert verzogerung retard
        retarde retraso retrasado demora vertraagd vertraging laat""",
    "lost": "lost verloren perdu perdue perdido perdida kwijt",
    "order": """order orders ordered ordering purchase purchased purchases buy bought
        bestellung bestellungen bestellt bestellen bestellnummer kauf gekauft einkauf commande
        commandes commander achat achete acheter pedido pedidos pedi compra compras comprado
        compre bestelling bestellingen besteld""",
    "item": """item items product products article articles artikel ware waren produkt
        produkte produit produits articulo articulos producto productos""",
    "damage": """damage damaged damages broken break breaks cracked crack smashed shattered
        crushed dented defect defective faulty kaputt beschadigt beschadigung zerbrochen
        gebrochen defekt zerkratzt casse cassee casses endommage endommagee abime abimee brise
        fissure ecrase ecrasee defectueux roto rota rotos danado danada dano estropeado
        aplastado aplastada agrietado defectuoso rajado kapot beschadigd gebroken""",
    "replace": """replacement replace replaced exchange exchanged ersatz ersetzen austausch
        austauschen umtausch umtauschen remplacement remplacer echange echanger reemplazo
        reemplazar sustitucion vervanging vervangen omruilen""",
    "photo": """photo photos picture pictures pic image images foto fotos bild bilder imagen
        imagenes afbeelding""",
    "box": "box boxes carton cardboard karton kiste boite caja doos",
    "packaging": "packaging verpackung emballage embalaje verpakking",
    "wrong": """wrong incorrect mistake falsch falsche falschen fausse mauvais mauvaise
        errone trompe equivocado equivocada incorrecto incorrecta verkeerd verkeerde onjuist""",
    "missing": """missing fehlt fehlen fehlend manquant manque manquent falta faltan faltante
        ontbreekt ontbreken""",
    "invoice": """invoice invoices invoiced receipt receipts bill billing rechnung rechnungen
        quittung beleg facture factures facturation factura facturas recibo recibos
        facturacion factuur facturen""",
    "vat": """vat tax taxes mwst mehrwertsteuer umsatzsteuer ust steuer tva taxe iva impuesto
        impuestos""",
    "company": """company companies business businesses firm firma unternehmen gmbh societe
        entreprise empresa empresas sociedad bedrijf onderneming""",
    "accounting": """accounting accountant bookkeeping bookkeeper buchhaltung comptabilite
        comptable contabilidad contable boekhouding""",
    "address": """address addresses adresse adressen anschrift lieferadresse lieferanschrift
        rechnungsadresse direccion direcciones domicilio adres""",
    "change": """change changes changed changing modify modified amend amended andern
        geandert anderung anderungen changer modifier modifie modification cambiar cambio
        cambiado modificar modificado wijzigen gewijzigd wijziging veranderen aanpassen""",
    "update": """update updates updated updating upgrade aktualisierung aktualisiert
        aktualisieren mise_a_jour actualizacion actualizar actualizado actualiza bijgewerkt""",
    "relocate": """relocate relocated umzug umgezogen demenage demenagement mudanza mudado
        verhuisd verhuizing""",
    "street": "street strasse rue calle straat",
    "cancel": """cancel cancels cancelled canceled cancelling canceling cancellation
        cancelation terminate terminated termination kundigen kundigung gekundigt stornieren
        storniert stornierung storno annuler annule annulee annulation resilier resiliation
        resilie cancelar cancelado cancelada cancelacion anular anulado anulacion dar_de_baja
        darme_de_baja darse_de_baja opzeggen opgezegd annuleren geannuleerd""",
    "subscription": """subscription subscriptions membership memberships abo abos abonnement
        abonnements mitgliedschaft adhesion suscripcion suscripciones membresia lidmaatschap""",
    "renew": """renew renews renewed renewal renewing verlangerung verlangern verlangert
        renouvellement renouveler renovacion renovar verlenging verlengen""",
    "unsubscribe": """unsubscribe unsubscribed abbestellen abmelden desabonner desinscrire
        desuscribir afmelden uitschrijven""",
    "crash": """crash crashes crashed crashing freeze freezes froze frozen freezing absturz
        absturzen abgesturzt sturzt plante plantage se_cierra bloquea congela cuelga
        crasht vastlopen loopt_vast vastgelopen""",
    "app": """app apps application applications anwendung applikation appli aplicacion
        aplicaciones applicatie""",
    "error": """error errors bug bugs glitch fehler fehlermeldung erreur erreurs bogue fallo
        fallos fout""",
    "open": """open opens opened opening launch launches launched offnen offnet geoffnet
        ouvrir ouvre ouvert lancer abrir abro abre abierto openen opent""",
    "install": """install installed installing reinstall reinstalled reinstalling installieren
        installiert installer reinstaller instalar reinstalar installeren""",
    "phone": """phone phones smartphone mobile telefon telephone movil celular
        telefono telefoon mobiel""",
    "discount": """discount discounts coupon coupons voucher vouchers promo promotion
        promotional rabatt rabattcode gutschein gutscheine gutscheincode aktionscode reduction
        remise descuento descuentos cupon cupones promocion promocional korting kortingscode
        kortingsbon waardebon""",
    "code": "code codes codigo codigos",
    "invalid": """invalid not_valid ungultig nicht_gultig invalide non_valide invalido invalida
        no_valido ongeldig niet_geldig""",
    "expire": """expire expired expires expiry abgelaufen expiree caducado caducada caduca
        vencido verlopen""",
    "checkout": "checkout kasse bezahlvorgang bestellvorgang afrekenen",
    "cart": "cart basket warenkorb panier carrito cesta winkelwagen winkelmand",
    "delete": """delete deleted deleting deletion erase erased erasure remove removed removal
        loschen geloscht loschung entfernen entfernt supprimer supprime suppression effacer
        efface eliminar eliminado eliminada eliminacion borrar borrado borrada supresion
        verwijderen verwijderd wissen gewist""",
    "data": """data information informationen informations informacion informatie daten
        donnees datos gegevens persoonsgegevens""",
    "personal": "personal personlich personnelles personnelle personales persoonlijke",
    "gdpr": "gdpr dsgvo rgpd",
    "privacy": "privacy datenschutz confidentialite privacidad",
    "close": """close closed closing closure schliessen geschlossen schliessung fermer ferme
        fermeture cerrar cerrado cerrada cierra cierre sluiten gesloten opheffen""",
    "confirm": """confirm confirmed confirmation bestatigung bestatigt bestatigen confirmer
        confirme confirmacion confirmar confirmado bevestiging bevestigd""",
    "wait": """wait waiting waited warten warte gewartet attendre attente esperar esperando
        espero wachten wacht""",
    "week": "week weeks weekly woche wochen semaine semaines semana semanas weken",
    "month": """month months monthly monat monate monatlich mois mensuel mensuelle mensual
        maand maanden maandelijks""",
    "download": """download downloaded herunterladen runterladen telecharger telecharge
        descargar descargado downloaden""",
    "screen": "screen display bildschirm ecran pantalla scherm",
    "attachment": "attached attachment attachments anhang angehangt piece_jointe adjunto bijlage",
    "gift": "gift gifts geschenk cadeau regalo",
    "size": "size sizes grosse taille talla tamano maat",
    "price": "price prices preis preise prix precio precios prijs",
    "shop": "shop shops store stores geschaft filiale magasin boutique tienda winkel",
}
"""General support vocabulary: each concept's words in en/de/fr/es/nl (``_`` joins a phrase)."""

_SYNONYMS: dict[str, str] = {}
_PHRASES: dict[str, list[tuple[tuple[str, ...], str]]] = {}
for _concept, _spellings in _CONCEPTS.items():
    for _word in _spellings.split():
        if "_" in _word:
            _parts = tuple(_word.split("_"))
            _PHRASES.setdefault(_parts[0], []).append((_parts, _concept))
        else:
            _SYNONYMS.setdefault(_word, _concept)
    _SYNONYMS.setdefault(_concept, _concept)
for _choices in _PHRASES.values():
    _choices.sort(key=lambda p: -len(p[0]))  # the longest phrase first


def fold(word: str) -> str:
    """``word`` lower-cased without accents (``Lösung`` → ``losung``, ``Straße`` → ``strasse``)."""
    word = word.lower().translate(_SPECIAL_LETTERS)
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("aciones", ""), ("ciones", ""), ("ations", ""), ("ements", ""), ("acion", ""),
    ("ation", ""), ("ement", ""), ("ungen", ""), ("ments", ""), ("cion", ""), ("ions", ""),
    ("ment", ""), ("ings", ""), ("ados", ""), ("adas", ""), ("idos", ""), ("idas", ""),
    ("ies", "y"), ("ied", "y"), ("ing", ""), ("ung", ""), ("ion", ""), ("ado", ""), ("ada", ""),
    ("ido", ""), ("ida", ""), ("ees", ""), ("ern", "er"), ("ly", ""), ("ed", ""), ("es", ""),
    ("en", ""), ("ee", ""), ("os", ""), ("as", ""), ("s", ""), ("e", ""), ("o", ""), ("a", ""),
)
_MIN_STEM = 3
_KEEP_DOUBLE = frozenset("lsz")
_VOWEL = re.compile("[aeiouy]")


def _stems(word: str) -> list[str]:
    """``word`` and what each suffix stripping makes of it in turn (see :func:`stem`)."""
    forms = [word]
    if not word.isalpha():
        return forms
    for _ in range(3):
        for suffix, replacement in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= _MIN_STEM:
                if suffix == "s" and word.endswith(("ss", "us", "is")):
                    continue
                shorter = word[:-len(suffix)] + replacement
                if not _VOWEL.search(shorter):
                    continue
                word = shorter
                forms.append(word)
                break
        else:
            break
    if len(forms) > 1 and len(word) > _MIN_STEM and word[-1] == word[-2] \
            and word[-1] not in _KEEP_DOUBLE and word[-1] not in "aeiou":
        forms.append(word[:-1])
    return forms


def stem(word: str) -> str:
    """A light suffix stripping shared by en/de/fr/es/nl (``shipped`` → ``ship``, ``arrives`` →
    ``arriv``, ``Bestellungen`` → ``bestell``, ``pedidos`` → ``pedid``): repeated while a suffix
    fits and leaves a vowel, then a doubled final consonant is undoubled as Porter does (not l,
    s, z)."""
    return _stems(word)[-1]


@lru_cache(maxsize=100_000)
def _term(word: str) -> str | None:
    """One lower-cased word as an index term: its concept, or its stem; None if it says
    nothing (a stop word, a number, one letter, or an over-long run of characters)."""
    w = fold(word)
    if len(w) < 2 or len(w) > 30 or w.isdigit() or w in _STOP_WORDS:
        return None
    forms = _stems(w)
    for form in forms:  # "screens" is "screen" before it is "scre"
        concept = _SYNONYMS.get(form)
        if concept is not None:
            return concept
    s = forms[-1]
    return None if s in _STOP_WORDS else s


def _folded_words(text: str) -> list[str]:
    return [fold(w) if not w.isascii() else w for w in _WORD.findall(text.lower())]


def _analyse(text: str) -> list[tuple[str, str | None]]:
    """``(word, term)`` for each word of ``text``, phrases (``mot de passe``) as one word."""
    words = _folded_words(text)
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        choices = _PHRASES.get(w)
        if choices is not None:
            for parts, concept in choices:
                if tuple(words[i:i + len(parts)]) == parts:
                    out.append((" ".join(parts), concept))
                    i += len(parts)
                    break
            else:
                out.append((w, _term(w)))
                i += 1
            continue
        out.append((w, _term(w)))
        i += 1
    return out


def terms(text: str) -> list[str]:
    """The index terms of ``text``, in order (see the module doc)."""
    return [t for _, t in _analyse(text) if t is not None]


# --- near spellings --------------------------------------------------------------------------

_MIN_FUZZY = 5
"""Words shorter than this are not corrected: too many real words are one edit apart."""
_MIN_SUBSTITUTED = 8
"""A changed letter (rather than one missing, extra or swapped) is taken for a typo only in words
this long: in shorter ones it is as often another word ("plants" is not "plante", "cause" is not
"casse")."""


def _trigrams(word: str) -> set[str]:
    padded = f"^{word}$"
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


def one_edit(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter missing, added, swapped with its neighbour, or
    (in words of :data:`_MIN_SUBSTITUTED` letters or more) changed."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) != len(b):
        short, long_ = (a, b) if len(a) < len(b) else (b, a)
        i = 0
        while i < len(short) and short[i] == long_[i]:
            i += 1
        return short[i:] == long_[i + 1:]
    differ = [i for i in range(len(a)) if a[i] != b[i]]
    if len(differ) == 1:
        return len(a) >= _MIN_SUBSTITUTED
    return len(differ) == 2 and differ[1] == differ[0] + 1 \
        and a[differ[0]] == b[differ[1]] and a[differ[1]] == b[differ[0]]


class _NearWords:
    """Words found by their character trigrams, for correcting typos."""

    def __init__(self) -> None:
        self._by_trigram: dict[str, list[str]] = {}
        self._known: set[str] = set()

    def approximate_bytes(self) -> int:
        size = sys.getsizeof
        return size(self._by_trigram) + size(self._known) + sum(
            size(g) + size(words) for g, words in self._by_trigram.items())

    def add(self, word: str) -> None:
        if len(word) < _MIN_FUZZY - 1 or word in self._known or not word.isalpha():
            return
        self._known.add(word)
        for gram in _trigrams(word):
            self._by_trigram.setdefault(gram, []).append(word)

    def nearest(self, word: str, weight: Callable[[str], float]) -> str | None:
        """The known word one edit from ``word`` (:func:`one_edit`) with the same first letter,
        the heaviest by ``weight`` if there are several; words of weight 0 are skipped."""
        grams = _trigrams(word)
        shared: Counter[str] = Counter()
        for gram in grams:
            found = self._by_trigram.get(gram)
            if found:
                shared.update(found)
        need = max(2, len(grams) - 4)  # a swap changes at most four trigrams
        best: tuple[float, str] | None = None
        for candidate, count in shared.items():
            if count < need or candidate[0] != word[0] or not one_edit(word, candidate):
                continue
            w = weight(candidate)
            if w > 0 and (best is None or (-w, candidate) < best):
                best = (-w, candidate)
        return None if best is None else best[1]


_CONCEPT_WORDS = _NearWords()
for _word in [*_SYNONYMS, *_STOP_WORDS]:
    _CONCEPT_WORDS.add(_word)


def _concept_weight(word: str) -> float:
    return 1.0


# --- the index -------------------------------------------------------------------------------

K1 = 1.2
B = 0.75
MIN_SCORE = 0.1
"""Conversations scoring below this are not listed (see the module doc for what scores mean)."""
CANDIDATES = 3000
"""At most this many conversations are gathered by BM25 before the best are scored exactly."""
COMMON = 0.1
"""Words in more than this share of the conversations do not gather candidates (they still count
in the exact score): "order" in a shop's inbox says little and would touch every posting."""
MAX_QUERY_TERMS = 40
"""Only the query's this many heaviest words (rare, repeated) are looked up, as Lucene's "more
like this" does: a long text's other words cost time and change little."""
RESCORED = 50
"""How many of BM25's best are scored exactly (at least ten times ``limit``)."""
CORRECTED = 0.8
"""A typo-corrected word counts this much of a word spelled right."""
_TF_BITS = 8
_TF_MAX = (1 << _TF_BITS) - 1
_MAX_KEY = (1 << (63 - _TF_BITS)) - 1


def _saturated(tf: float) -> float:
    return tf * (K1 + 1) / (tf + K1)


class SimilarityIndex:
    """An in-memory, incremental index of texts by integer key (a conversation id) that finds
    the texts most like a query (see the module doc for how, and what the scores mean).

    Postings are per word: an ``array`` of ``key << 8 | count``, sorted by key; each text also
    keeps its own words (``array`` of ``word id << 8 | count``, so up to 2**24 distinct words)
    to be removed and scored exactly. Keys are integers from 0 to 2**55.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._words: list[str] = []
        self._postings: list[array[int]] = []
        self._docs: dict[int, array[int]] = {}
        self._lengths: dict[int, int] = {}
        self._total_length = 0
        self._near = _NearWords()

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, key: object) -> bool:
        return key in self._docs

    def approximate_bytes(self) -> int:
        """About how much memory the index holds (its containers, arrays, words and keys)."""
        size = sys.getsizeof
        total = size(self._ids) + size(self._words) + size(self._postings) + size(self._docs) \
            + size(self._lengths) + sum(size(w) for w in self._words)
        total += sum(size(p) for p in self._postings) + sum(size(d) for d in self._docs.values())
        total += size(0) * 2 * len(self._docs)  # the keys and lengths (ints)
        return total + self._near.approximate_bytes()

    def add(self, key: int, text: str) -> None:
        """Index ``text`` under ``key``, replacing what ``key`` had."""
        if not 0 <= key <= _MAX_KEY:
            raise ValueError(f"key {key} is out of range")
        if key in self._docs:
            self.discard(key)
        counts = Counter(terms(text))
        own = array("I")
        shifted = key << _TF_BITS
        for word, tf in counts.items():
            word_id = self._ids.get(word)
            if word_id is None:
                word_id = self._ids[word] = len(self._words)
                self._words.append(word)
                self._postings.append(array("q"))
                self._near.add(word)
            tf = min(tf, _TF_MAX)
            own.append(word_id << _TF_BITS | tf)
            postings = self._postings[word_id]
            if not postings or postings[-1] < shifted:
                postings.append(shifted | tf)
            else:
                insort(postings, shifted | tf)
        length = sum(counts.values())
        self._docs[key] = own
        self._lengths[key] = length
        self._total_length += length

    def discard(self, key: int) -> None:
        """Forget ``key`` (nothing if it is not indexed)."""
        own = self._docs.pop(key, None)
        if own is None:
            return
        self._total_length -= self._lengths.pop(key)
        shifted = key << _TF_BITS
        for packed in own:
            postings = self._postings[packed >> _TF_BITS]
            i = bisect_left(postings, shifted)
            if i < len(postings) and postings[i] >> _TF_BITS == key:
                del postings[i]

    def _idf(self, df: int) -> float:
        n = len(self._docs)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def _query_vector(self, text: str) -> tuple[dict[int, float], float]:
        """The query's weight per known word id, and its squared norm. Words the index does not
        know are corrected if they are near a known one; the rest count in the norm as the
        rarest known words do (a text about something else is less like anything indexed)."""
        counts: Counter[int] = Counter()
        factors: dict[int, float] = {}
        unknown: Counter[str] = Counter()
        for word, term in _analyse(text):
            if term is None:
                continue
            word_id, factor = self._known(term), 1.0
            if word_id is None:
                word_id, factor = self._correct(word, term), CORRECTED
            if word_id is None:
                unknown[term] += 1
            elif word_id >= 0:
                counts[word_id] += 1
                factors[word_id] = max(factors.get(word_id, 0.0), factor)
        rarest = self._idf(1)
        weights = {word_id: factors[word_id] * self._idf(len(self._postings[word_id]))
                   * _saturated(tf) for word_id, tf in counts.items()}
        norm2 = sum(w * w for w in weights.values())
        norm2 += sum((rarest * _saturated(tf)) ** 2 for tf in unknown.values())
        if len(weights) > MAX_QUERY_TERMS:  # the norm is still the whole text's
            weights = dict(heapq.nlargest(MAX_QUERY_TERMS, weights.items(), key=lambda i: i[1]))
        return weights, norm2

    def _known(self, term: str) -> int | None:
        word_id = self._ids.get(term)
        return word_id if word_id is not None and self._postings[word_id] else None

    def _correct(self, word: str, term: str) -> int | None:
        """The id of the word the index knows that an unknown ``word`` (its ``term``) is a typo
        of: a concept word one edit away, else an indexed word one edit from its stem (of six
        letters or more), the most frequent (:class:`_NearWords`). None if nothing is near; -1
        if it is a stop word misspelt (dropped)."""
        if len(word) < _MIN_FUZZY or not word.isalpha():
            return None
        near = _CONCEPT_WORDS.nearest(word, _concept_weight)
        if near is not None:
            if near in _STOP_WORDS:
                return -1 if len(word) > _MIN_FUZZY else None
            target = _SYNONYMS.get(near) or _term(near)
        elif len(term) > _MIN_FUZZY and term.isalpha():
            target = self._near.nearest(term, self._df_of)
        else:
            return None
        return self._known(target) if target else None

    def _df_of(self, word: str) -> float:
        word_id = self._ids.get(word)
        return 0.0 if word_id is None else float(len(self._postings[word_id]))

    def query(self, text: str, *, limit: int = 3,
              exclude: Collection[int] = ()) -> list[tuple[int, float]]:
        """The keys of the texts most like ``text``, best first, with their scores (0..1, see the
        module doc); only those scoring at least :data:`MIN_SCORE`."""
        if limit <= 0 or not self._docs:
            return []
        weights, query_norm2 = self._query_vector(text)
        if not weights or query_norm2 <= 0:
            return []
        excluded = set(exclude)
        gathered = self._gather(weights)
        for key in excluded:
            gathered.pop(key, None)
        best = heapq.nlargest(max(RESCORED, 10 * limit), gathered.items(), key=lambda i: i[1])
        query_norm = math.sqrt(query_norm2)
        scored = []
        for key, _ in best:
            score = self._cosine(key, weights, query_norm)
            if score >= MIN_SCORE:
                scored.append((key, score))
        scored.sort(key=lambda item: (-item[1], item[0]))
        return scored[:limit]

    def _gather(self, weights: dict[int, float]) -> dict[int, float]:
        """BM25 over the postings of the query's words, rarest first: candidates and a first
        score. Common words (:data:`COMMON`) gather nothing, unless all the query's words are
        common (then the rarest does); once :data:`CANDIDATES` are found, later words only add to
        those found."""
        n = len(self._docs)
        common = max(50, int(COMMON * n))
        average = self._total_length / n if n else 1.0
        lengths = self._lengths
        k_base, k_length = K1 * (1 - B), K1 * B / (average or 1.0)
        k1p1 = K1 + 1
        gathered: dict[int, float] = {}
        order = sorted(weights, key=lambda word_id: len(self._postings[word_id]))
        for word_id in order:
            postings = self._postings[word_id]
            if len(postings) > common and gathered:  # (the rarest gathers, however common)
                break
            w = weights[word_id] * k1p1
            full = len(gathered) >= CANDIDATES
            get = gathered.get
            for packed in postings:
                key = packed >> _TF_BITS
                tf = packed & _TF_MAX
                previous = get(key)
                if previous is None:
                    if full:
                        continue
                    previous = 0.0
                gathered[key] = previous + w * tf / (tf + k_base + k_length * lengths[key])
        return gathered

    def _cosine(self, key: int, weights: dict[int, float], query_norm: float) -> float:
        """The score of ``key`` (see the module doc), from its own words and today's idf."""
        norm2 = 0.0
        dot = 0.0
        n = len(self._docs)
        postings = self._postings
        for packed in self._docs[key]:
            word_id = packed >> _TF_BITS
            df = len(postings[word_id])
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            w = idf * _saturated(packed & _TF_MAX)
            norm2 += w * w
            q = weights.get(word_id)
            if q is not None:
                dot += w * q
        if dot <= 0 or norm2 <= 0:
            return 0.0
        return min(1.0, dot / (math.sqrt(norm2) * query_norm))


# --- the store's resolved conversations ------------------------------------------------------

class Titled(Protocol):
    """What a conversation is looked up by: its id and subject (a stored Conversation, or a
    row of those columns)."""

    @property
    def id(self) -> int: ...
    @property
    def subject(self) -> str: ...


@dataclass(frozen=True)
class SimilarHit:
    conversation_id: int
    reference: str
    subject: str
    status: str
    resolution_note: str | None
    score: float

    def view(self) -> dict[str, Any]:
        """The ``frontdesk similar --json`` element."""
        return {"reference": self.reference, "subject": self.subject, "status": self.status,
                "resolution_note": self.resolution_note, "score": round(self.score, 3)}


RESOLVED = "resolved"
_CHUNK = 500
"""Conversations whose messages are read in one query (bound parameters stay few)."""
_YIELD_EVERY = 200
"""Texts indexed between two turns of the event loop, so a first load does not stall it."""


@dataclass(frozen=True)
class _Stamp:
    """What an indexed conversation looked like when it was indexed."""

    updated_at: datetime
    subject: str
    resolution_note: str | None


class SimilarConversations:
    """The resolved conversations of the store in a :class:`SimilarityIndex`, kept in step.

    The first :meth:`refresh` indexes every resolved conversation; later ones read only
    conversations whose ``updated_at`` is at or after the watermark (the newest ``updated_at``
    seen, less ``overlap``, which covers a transaction that committed after a later one), adding
    or replacing the resolved ones and dropping those no longer resolved. Hits are checked
    against the store before they are listed, so a conversation reopened, erased or deleted
    since is never shown. ``refresh_interval`` (seconds) lets :meth:`similar_to` skip a refresh
    made less than that long ago; an explicit :meth:`refresh` always reads.
    """

    def __init__(self, *, overlap: timedelta = timedelta(minutes=2),
                 refresh_interval: float = 0.0) -> None:
        self.index = SimilarityIndex()
        self.overlap = overlap
        self.refresh_interval = refresh_interval
        self._watermark: datetime | None = None
        self._loaded = False
        self._stamps: dict[int, _Stamp] = {}
        self._lock = asyncio.Lock()
        self._refreshed_at: float | None = None

    def changed(self) -> None:
        """Something was resolved or reopened in this process: the next :meth:`similar_to`
        refreshes whatever ``refresh_interval`` says."""
        self._refreshed_at = None

    async def refresh(self, session: AsyncSession) -> None:
        """Bring the index in step with the store (see the class doc)."""
        async with self._lock:
            started = time.monotonic()
            if not self._loaded:
                newest = (await session.execute(
                    select(func.max(Conversation.updated_at)))).scalar_one_or_none()
                count = await self._load(session, Conversation.status == RESOLVED)
                self._watermark = newest
                self._loaded = True
                log.info("indexed %d resolved conversations in %.2f s (about %.0f MB)", count,
                         time.monotonic() - started, self.index.approximate_bytes() / 1e6)
            else:
                since = None if self._watermark is None else self._watermark - self.overlap
                condition = Conversation.id.is_not(None) if since is None \
                    else Conversation.updated_at >= since
                await self._load(session, condition)
            self._refreshed_at = time.monotonic()

    async def _load(self, session: AsyncSession, condition: ColumnElement[bool]) -> int:
        """Index the conversations matching ``condition`` that are resolved and changed; drop the
        others from the index. Returns how many were (re)indexed."""
        rows = (await session.execute(
            select(Conversation.id, Conversation.status, Conversation.subject,
                   Conversation.resolution_note, Conversation.tags, Conversation.updated_at)
            .where(condition).order_by(Conversation.id))).all()
        changed = []
        for row in rows:
            if self._watermark is None or row.updated_at > self._watermark:
                self._watermark = row.updated_at
            if row.status != RESOLVED:
                self._forget(row.id)
                continue
            stamp = _Stamp(row.updated_at, row.subject or "", row.resolution_note)
            if self._stamps.get(row.id) != stamp:
                changed.append((row, stamp))
        indexed = 0
        for start in range(0, len(changed), _CHUNK):
            chunk = changed[start:start + _CHUNK]
            texts = await customer_texts(session, [row.id for row, _ in chunk])
            for row, stamp in chunk:
                self.index.add(row.id, conversation_document(
                    row.subject or "", texts.get(row.id, []), row.resolution_note,
                    _tag_list(row.tags)))
                self._stamps[row.id] = stamp
                indexed += 1
                if indexed % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        return indexed

    def _forget(self, conversation_id: int) -> None:
        self.index.discard(conversation_id)
        self._stamps.pop(conversation_id, None)

    async def similar_to(self, session: AsyncSession, conversation: Conversation, *,
                         limit: int = 3) -> list[SimilarHit]:
        """Up to ``limit`` resolved conversations most like ``conversation``, best first."""
        return (await self.similar_to_each(session, [conversation], limit=limit))[
            conversation.id]

    async def similar_to_each(self, session: AsyncSession,
                              conversations: Sequence[Titled], *,
                              limit: int = 3) -> dict[int, list[SimilarHit]]:
        """:meth:`similar_to` for several conversations, their texts read in one query (none
        while nothing is resolved: a new installation, a burst of first contacts)."""
        if self.refresh_interval <= 0 or self._refreshed_at is None \
                or time.monotonic() - self._refreshed_at >= self.refresh_interval:
            await self.refresh(session)
        if not len(self.index):
            return {c.id: [] for c in conversations}
        texts = await customer_texts(session, [c.id for c in conversations])
        return {c.id: await self.similar_to_text(
                    session, query_document(c.subject, texts.get(c.id, [])), limit=limit,
                    exclude=(c.id,))
                for c in conversations}

    async def similar_to_text(self, session: AsyncSession, text: str, *, limit: int = 3,
                              exclude: Collection[int] = ()) -> list[SimilarHit]:
        """As :meth:`similar_to`, for a text (no refresh: call :meth:`refresh` first)."""
        hits: list[SimilarHit] = []
        skip = set(exclude)
        for _ in range(3):  # hits found stale are dropped and the query asked again
            found = self.index.query(text, limit=limit + 3, exclude=skip)
            if not found:
                break
            rows = {row.id: row for row in (await session.execute(
                select(Conversation.id, Conversation.status, Conversation.subject,
                       Conversation.resolution_note, Conversation.updated_at)
                .where(Conversation.id.in_([key for key, _ in found])))).all()}
            stale = []
            for key, score in found:
                row = rows.get(key)
                skip.add(key)
                if row is None or row.status != RESOLVED:
                    self._forget(key)  # deleted, or reopened by a change we have not read
                    continue
                stamp = self._stamps.get(key)
                if stamp is None or (stamp.subject, stamp.resolution_note) != (
                        row.subject or "", row.resolution_note):
                    stale.append(key)  # changed without a new updated_at (an erasure)
                    continue
                hits.append(SimilarHit(key, f"FD-{key}", row.subject or "", row.status,
                                       row.resolution_note, score))
            if stale:
                for key in stale:
                    self._stamps.pop(key, None)
                await self._load(session, Conversation.id.in_(stale))
            if len(hits) >= limit or len(found) < limit + 3:
                break
        hits.sort(key=lambda h: (-h.score, h.conversation_id))
        return hits[:limit]


def _tag_list(tags: Any) -> list[str]:
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


async def customer_texts(session: AsyncSession,
                         conversation_ids: Iterable[int]) -> dict[int, list[str]]:
    """The customer's first :data:`MESSAGES` messages of each conversation (their new part, not
    the quoted history; never notes or staff's words), each cut to :data:`MAX_MESSAGE`
    characters, in one query."""
    ids = list(conversation_ids)
    if not ids:
        return {}
    body = func.substr(func.coalesce(Message.text_new, Message.text), 1, MAX_MESSAGE)
    ranked = (
        select(Message.conversation_id.label("conversation_id"), body.label("body"),
               func.row_number().over(partition_by=Message.conversation_id,
                                      order_by=Message.id).label("n"))
        .where(Message.conversation_id.in_(ids), Message.author == "customer",
               Message.direction == "in", Message.is_note.is_(False))
        .subquery())
    rows = (await session.execute(
        select(ranked.c.conversation_id, ranked.c.body).where(ranked.c.n <= MESSAGES)
        .order_by(ranked.c.conversation_id, ranked.c.n))).all()
    texts: dict[int, list[str]] = {}
    for conversation_id, text in rows:
        texts.setdefault(conversation_id, []).append(text or "")
    return texts
