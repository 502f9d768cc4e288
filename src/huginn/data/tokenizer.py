"""Train a Huginn-style byte-level BPE tokenizer and check tokenizer/model compatibility.

The layout follows the published Huginn tokenizer where it is used in code: byte-level BPE,
single digits split, and a block of 32 special tokens in the LAST ids of the vocabulary
(`<|begin_text|>` = V-32 ... `<|pad|>` = V-27; with V = 65,536 these are 65504 ... 65509). The
block holds the first 32 names of the reference's "complete" special-token list; the four
tool tokens of that list are left out so the ids used by the published model line up. A chat
template renders turns as `<|begin_header|>role<|end_header|>\\n\\n content <|end_turn|>`.

The saved directory loads with `transformers.AutoTokenizer.from_pretrained`. Encoding adds no
special tokens by itself (as the reference's tokenizer wrapper); packing adds `<|begin_text|>`
and `<|end_text|>` around each document explicitly (`huginn.data.tokenize`).

Non-goals: the reference's full "aeolian" pre-tokenizer regex and its 2,855 manual tokens
(code quotes, whitespace runs, emoji ranges); training on more than one machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from huginn.errors import HuginnError

# The first 32 of the reference's special-token list, in its order (ids V-32 .. V-1).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_text|>",
    "<|end_text|>",
    "<|begin_header|>",
    "<|end_header|>",
    "<|end_turn|>",
    "<|pad|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|...|>",
    "<|del|>",
    *(f"<|c_{i}|>" for i in range(10)),
    "<|?|>",
    "<|&|>",
    "<|!|>",
    "<|-|>",
    "<|+|>",
    "<|interrupt|>",
    "<|>>-|>",
    "<|-<<|>",
    "<|->>|>",
    "<|<<-|>",
)
assert len(SPECIAL_TOKENS) == 32
BOS, EOS, PAD, END_TURN = "<|begin_text|>", "<|end_text|>", "<|pad|>", "<|end_turn|>"
# bytes (256) + the special block: anything smaller cannot encode every byte
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MAX_DOC_CHARS = 32_768  # the reference cuts training rows to this many characters

# Our own template (same rendering as the published one): BOS once, headers around each role,
# the assistant shown as "Huginn" and marked for assistant-token masks.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'Huginn' if message['role'] in ['assistant', 'gpt', 'Huginn'] else message['role'] %}"
    "<|begin_header|>{{ role }}<|end_header|>\n\n"
    "{% if role == 'Huginn' %}{% generation %}{{ message['content'] | trim }}<|end_turn|>{% endgeneration %}"
    "{% else %}{{ message['content'] | trim }}<|end_turn|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|begin_header|>Huginn<|end_header|>\n\n{% else %}<|end_text|>{% endif %}"
)


def special_token_ids(vocab_size: int) -> dict[str, int]:
    """Where the special tokens sit in a vocabulary of `vocab_size` ids."""
    base = vocab_size - len(SPECIAL_TOKENS)
    return {tok: base + i for i, tok in enumerate(SPECIAL_TOKENS)}


def check_vocab_size(vocab_size: int) -> None:
    """Raise a `HuginnError` unless `vocab_size` holds every byte and the special-token block."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise HuginnError(
            f"--vocab-size {vocab_size} is too small; use at least {MIN_VOCAB_SIZE} (256 bytes + 32 special tokens)"
        )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    *,
    min_frequency: int = 2,
    length: int | None = None,
) -> Path:
    """Train byte-level BPE on `texts` and save a transformers-loadable tokenizer in `out_dir`.

    The vocabulary has exactly `vocab_size` ids: BPE tokens, then `<|reserved_i|>` fillers when
    the corpus is too small to learn enough merges, then the 32 special tokens. Null and empty
    texts are skipped; when nothing is left, a `HuginnError` is raised and nothing is written.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    n_regular = vocab_size - len(SPECIAL_TOKENS)
    tok = Tokenizer(models.BPE())
    # digits first become single-character pieces, then GPT-2 byte-level splitting on the rest
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_regular,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
        max_token_length=32,
    )
    seen = 0

    def documents() -> Iterator[str]:
        nonlocal seen
        for t in texts:
            if t:
                seen += 1
                yield t[:MAX_DOC_CHARS]

    tok.train_from_iterator(documents(), trainer=trainer, length=length)
    if seen == 0:
        # BPE on no text is only the byte alphabet: a tokenizer that looks fine but learned nothing
        raise HuginnError("no text to train on: every document is null or empty; check --input and --text-column")
    n_learned = tok.get_vocab_size()
    if n_learned > n_regular:  # cannot happen with the trainer's limit; guard the id layout anyway
        raise HuginnError(f"BPE learned {n_learned} tokens for {n_regular} slots; report this as a bug")
    fillers = [f"<|reserved_{i}|>" for i in range(n_regular - n_learned)]
    tok.add_special_tokens(fillers + list(SPECIAL_TOKENS))
    ids = special_token_ids(vocab_size)
    for name, want in ids.items():
        got = tok.token_to_id(name)
        if got != want:
            raise HuginnError(f"special token {name} got id {got}, expected {want}; report this as a bug")
    return save_tokenizer(tok, out_dir)


def save_tokenizer(tok, out_dir: str | Path) -> Path:
    """Wrap a `tokenizers.Tokenizer` with Huginn's special tokens and chat template and save it."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out))
    return out


def load_tokenizer(tokenizer_dir: str | Path):
    """The raw `tokenizers.Tokenizer` of a saved directory (fast path for bulk encoding)."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise HuginnError(
            f"no tokenizer.json in {tokenizer_dir}; pass a directory written by `huginn data train-tokenizer` or `save_pretrained`"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:
        raise HuginnError(f"cannot read {path}: {str(err).splitlines()[0]}; re-create the tokenizer") from None


def tokenizer_ids(tok) -> dict[str, int]:
    """bos, eos and pad ids of a tokenizer (pad falls back to eos, as packed rows need one)."""
    bos, eos, pad = tok.token_to_id(BOS), tok.token_to_id(EOS), tok.token_to_id(PAD)
    if eos is None:
        raise HuginnError(f"the tokenizer has no {EOS} token; train it with `huginn data train-tokenizer`")
    return {"bos": bos, "eos": eos, "pad": eos if pad is None else pad}


def check_vocab(tokenizer_dir: str | Path, model_vocab_size: int) -> int:
    """Raise a `HuginnError` if the tokenizer can emit an id the model cannot embed; return its size.

    The trainer calls this before training on data produced with `tokenizer_dir`.
    """
    tok = load_tokenizer(tokenizer_dir)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > model_vocab_size:
        raise HuginnError(
            f"tokenizer {tokenizer_dir} has {size} ids but the model's vocab_size is {model_vocab_size}; "
            f"retrain the tokenizer with --vocab-size {model_vocab_size} or raise the model's vocab_size"
        )
    return size


def iter_texts(paths: Sequence[str | Path], text_column: str, batch_rows: int = 1024) -> Iterator[str]:
    """Stream the text column of parquet files (bounded memory); null and empty rows are skipped.
    Invalid UTF-8 raises a one-line `HuginnError` naming the file and row."""
    from huginn.data.sources import decode_texts, open_parquet

    for path in paths:
        pf = open_parquet(path, text_column)
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[text_column]):
            for t in decode_texts(batch.column(0), path, text_column, row):
                if t:
                    yield t
            row += batch.num_rows
