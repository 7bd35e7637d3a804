"""A deterministic, rule-based STAND-IN for a language model. It makes no network call.

The sample workflows were written for a real LLM. So that they run offline, in tests and in CI, and
always take the same route, ``complete(prompt)`` recognizes each kind of prompt the sample blueprints
send and answers it with a small rule:

==========================  ===============================================================
prompt asks for             answer
==========================  ===============================================================
moderation triage           the four rules written in the prompt, applied to its values
PII redaction               the text with emails and phone numbers replaced by ``[REDACTED]``
PII yes/no                  ``true`` iff the text holds an email or a phone number
spam yes/no                 ``true`` iff the text holds a link or promotional phrases
hate-speech severity        ``severe``/``moderate`` for blocklisted words, else ``none``
sentiment yes/no            ``true`` iff positive words and no complaint words
one-sentence summary        the first sentence of the text
review category             ``Bug Report``, ``Feature Request`` or ``General Feedback``
skills extraction           the known skills found, comma-separated, in order of appearance
cover-letter tone           ``unprofessional``/``casual`` for rude words/slang, else ``professional``
qualifications check        ``true`` iff every required skill is listed and the tone is professional
Jira-style ticket           a JSON object with the title and description from the prompt
anything else               ``[fake-llm] `` + the prompt on one line, truncated
==========================  ===============================================================

To use a real model instead, see :mod:`workflows.llm`.
"""

from __future__ import annotations

import json
import re

FAKE_PREFIX = "[fake-llm] "
MAX_ECHO_CHARS = 160

EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# 555-123-4567, (555) 123-4567, 555.123.4567, +1 555 123 4567, 5551234567
PHONE_RE = re.compile(r"(?<![\w-])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]?\d{3}[\s.-]?\d{4}(?![\w-])")

SPAM_MARKERS = (
    "http://",
    "https://",
    "www.",
    "buy now",
    "discount",
    "click here",
    "limited offer",
    "limited time",
    "free money",
    "act now",
    "order now",
    "earn $",
    "promo code",
)

# Placeholder blocklists: a real deployment uses a real model or a moderation service.
SEVERE_HATE_WORDS = ("subhuman", "exterminate", "vermin", "should all die", "kill them all")
MODERATE_HATE_WORDS = ("idiot", "moron", "stupid", "loser", "i hate you", "disgusting people")

POSITIVE_WORDS = (
    "great",
    "love",
    "excellent",
    "improvement",
    "amazing",
    "awesome",
    "good",
    "happy",
    "fantastic",
    "thank",
    "helpful",
    "perfect",
)
NEGATIVE_WORDS = (
    "crash",
    "slow",
    "bug",
    "broken",
    "error",
    "fail",
    "issue",
    "problem",
    "bad",
    "terrible",
    "awful",
    "hate",
    "disappoint",
    "frustrat",
)
BUG_WORDS = ("crash", "slow", "bug", "broken", "error", "fail", "freez", "not working")
FEATURE_WORDS = (
    "would be great if",
    "please add",
    "feature request",
    "i wish",
    "it would be nice",
    "could you add",
)

KNOWN_SKILLS = (
    "TypeScript",
    "JavaScript",
    "Node.js",
    "React",
    "Vue",
    "Angular",
    "SQL",
    "PostgreSQL",
    "MySQL",
    "MongoDB",
    "Redis",
    "Python",
    "Java",
    "C#",
    "Rust",
    "Docker",
    "Kubernetes",
    "AWS",
    "Azure",
    "GraphQL",
    "Terraform",
    "Git",
)

SLANG_WORDS = ("hey", "gonna", "wanna", "lol", "dude", "yo", "sup", "btw", "u r", "!!!")
RUDE_WORDS = ("whatever", "damn", "crap", "sucks", "give me the job", "i don't care")

ACTION_CODES = ("action_ban", "action_redact", "action_delete_spam", "action_approve")


def _contains_any(text: str, needles: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(needle in lowered for needle in needles)


def _count_words(text: str, stems: tuple[str, ...]) -> int:
    """How many of the word stems appear at the start of a word in the text."""
    lowered = text.lower()
    return sum(1 for stem in stems if re.search(r"\b" + re.escape(stem), lowered))


def _quoted_text(prompt: str, marker: str = 'Text: "') -> str:
    """The text the prompt quotes after ``marker`` (up to the last double quote), else the whole prompt."""
    start = prompt.find(marker)
    if start < 0:
        return prompt
    body = prompt[start + len(marker) :]
    end = body.rfind('"')
    return body[:end] if end >= 0 else body


def _after_blank_line(prompt: str) -> str:
    """The part of the prompt after its first blank line (where the sample prompts put their text)."""
    _, sep, rest = prompt.partition("\n\n")
    return rest if sep else prompt


def _bool(value: bool) -> str:
    return "true" if value else "false"


# --- The rules, one small function per kind of prompt ------------------------------------------------


def has_pii(text: str) -> bool:
    """True when the text contains an email address or a phone number."""
    return bool(EMAIL_RE.search(text) or PHONE_RE.search(text))


def redact_pii(text: str) -> str:
    """The text with every email address and phone number replaced by ``[REDACTED]``."""
    return PHONE_RE.sub("[REDACTED]", EMAIL_RE.sub("[REDACTED]", text))


def is_spam(text: str) -> bool:
    """True when the text contains a link or promotional language."""
    return _contains_any(text, SPAM_MARKERS)


def hate_speech_level(text: str) -> str:
    """``severe``, ``moderate`` or ``none`` from the placeholder blocklists."""
    if _contains_any(text, SEVERE_HATE_WORDS):
        return "severe"
    if _contains_any(text, MODERATE_HATE_WORDS):
        return "moderate"
    return "none"


def is_positive(text: str) -> bool:
    """True when the text has positive words and no complaint words (a complaint is not praise)."""
    return _count_words(text, POSITIVE_WORDS) > 0 and _count_words(text, NEGATIVE_WORDS) == 0


def first_sentence(text: str) -> str:
    """The first sentence of the text (the stand-in's one-sentence summary)."""
    text = " ".join(text.split())
    match = re.search(r"(.+?[.!?])(?:\s|$)", text)
    return match.group(1) if match else text


def categorize_review(text: str) -> str:
    """``Bug Report``, ``Feature Request`` or ``General Feedback``."""
    if _count_words(text, BUG_WORDS):
        return "Bug Report"
    if _contains_any(text, FEATURE_WORDS):
        return "Feature Request"
    return "General Feedback"


def extract_skills(text: str) -> list[str]:
    """The known skills named in the text, in the order they first appear."""
    found: list[tuple[int, str]] = []
    for skill in KNOWN_SKILLS:
        match = re.search(r"(?<![\w.#+])" + re.escape(skill) + r"(?![\w#+]|\.\w)", text, re.IGNORECASE)
        if match:
            found.append((match.start(), skill))
    return [skill for _, skill in sorted(found)]


def analyze_tone(text: str) -> str:
    """``unprofessional``, ``casual`` or ``professional``."""
    if _contains_any(text, RUDE_WORDS):
        return "unprofessional"
    if "!!!" in text or _count_words(text, tuple(w for w in SLANG_WORDS if w != "!!!")):
        return "casual"
    return "professional"


def check_qualifications(skills: str, required: list[str], tone: str) -> bool:
    """True when every required skill is in the skills text and the tone is exactly professional."""
    have = {s.strip().lower() for s in re.split(r"[,\n;]", skills) if s.strip()}
    lowered = skills.lower()
    has_all = all(r.lower() in have or r.lower() in lowered for r in required)
    return has_all and tone.strip().strip("'\".").lower() == "professional"


def triage(hate_level: str, pii_found: str, spam_detected: str) -> str:
    """The moderation router's four rules, as the 400 blueprint's prompt states them."""
    if "severe" in hate_level.lower():
        return "action_ban"
    if "true" in pii_found.lower():
        return "action_redact"
    if "true" in spam_detected.lower():
        return "action_delete_spam"
    return "action_approve"


def echo(prompt: str) -> str:
    """The default answer: a marked echo of the prompt on one line, truncated."""
    line = " ".join(prompt.split())
    if len(line) > MAX_ECHO_CHARS:
        line = line[: MAX_ECHO_CHARS - 3].rstrip() + "..."
    return FAKE_PREFIX + line


def _field(prompt: str, label: str) -> str:
    match = re.search(r"^\s*-\s*" + re.escape(label) + r":\s*(.*)$", prompt, re.MULTILINE | re.IGNORECASE)
    return match.group(1).strip() if match else ""


def _triage_prompt(prompt: str) -> str:
    return triage(
        _field(prompt, "Hate Speech Level"), _field(prompt, "PII Found"), _field(prompt, "Spam Detected")
    )


def _qualifications_prompt(prompt: str) -> str:
    quoted = re.findall(r"`([^`]*)`", prompt)
    if len(quoted) < 3:
        return "false"
    skills, required, tone = quoted[0], quoted[1], quoted[2]
    return _bool(check_qualifications(skills, [r.strip() for r in required.split(",") if r.strip()], tone))


def _sentiment_subject(prompt: str) -> str:
    """The quoted summary of the sentiment prompt (``... positive? '<summary>'. Respond ...``)."""
    start = prompt.find("'")
    end = prompt.rfind("'. Respond")
    if start < 0 or end <= start:
        return prompt
    return prompt[start + 1 : end]


def _ticket_prompt(prompt: str) -> str:
    title = re.search(r"Title:\s*'(.*?)'\.", prompt, re.DOTALL)
    description = re.search(r"Description:\s*'(.*?)'\.?\s*$", prompt, re.DOTALL)
    return json.dumps(
        {
            "title": title.group(1) if title else "Customer Feedback",
            "description": description.group(1) if description else "",
        }
    )


def complete(prompt: str) -> str:
    """Answer a prompt deterministically; the order matters where prompts share words."""
    lowered = prompt.lower()
    if "action codes" in lowered and "hate speech level" in lowered:
        return _triage_prompt(prompt)
    if "[redacted]" in lowered and "personally identifiable information" in lowered:
        return redact_pii(_quoted_text(prompt, 'Original Text: "'))
    if "personally identifiable information" in lowered:
        return _bool(has_pii(_quoted_text(prompt)))
    if "commercial spam" in lowered:
        return _bool(is_spam(_quoted_text(prompt)))
    if "hate speech" in lowered and "severity" in lowered:
        return hate_speech_level(_quoted_text(prompt))
    if "required skills" in lowered:
        return _qualifications_prompt(prompt)
    if "extract a list of all technical skills" in lowered:
        return ", ".join(extract_skills(_after_blank_line(prompt)))
    if "analyze the tone" in lowered:
        return analyze_tone(_after_blank_line(prompt))
    if "is the sentiment" in lowered and "positive" in lowered:
        return _bool(is_positive(_sentiment_subject(prompt)))
    if lowered.startswith("summarize") and ":" in prompt:
        return first_sentence(prompt.split(":", 1)[1])
    if lowered.startswith("categorize"):
        return categorize_review(prompt.split("Review:", 1)[-1])
    if "jira-style ticket" in lowered:
        return _ticket_prompt(prompt)
    return echo(prompt)
