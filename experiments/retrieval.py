"""Sec. 4 — retrieval: KV-retrieval layer sweep, and OpenBookQA closed book vs open book.

Retrieval from the context sits in shallow layers; with the evidence in the prompt (open book)
the model leans on different layers than when it must recall the fact (closed book).
"""

import sys

from depthprobe import cli, plots

STUDY = {"kv": "kv_retrieval", "closed book": "openbookqa", "open book": "openbookqa_open"}
ORGANISM = {"kv": "organism_retrieval", "closed book": "organism_closedbook", "open book": "organism_openbook"}


def main(argv: list[str] | None = None) -> int:
    parser = cli.experiment_parser(
        __doc__,
        default_model="organism-base",
        study_example="python experiments/retrieval.py --model llama-1-7b --n-pairs 20",
    )
    parser.add_argument("--n-pairs", type=int, default=None, help="key-value pairs per prompt (kv retrieval)")
    args = parser.parse_args(argv)
    model = cli.load(args)
    tasks = ORGANISM if cli.is_organism(args.model) else STUDY
    kv_options = {} if args.n_pairs is None else {"n_pairs": args.n_pairs}
    kv = cli.sweep(model, tasks["kv"], "layers", args, "retrieval", tasks["kv"], **kv_options)
    print(cli.summary(kv, ["acc"], title=tasks["kv"]))
    title = plots.run_title(
        "key-value retrieval, layer skips", kv, model=args.model, task=tasks["kv"], limit=args.limit
    )
    cli.save(plots.layer_curves(kv, ["acc"], title=title), args, "retrieval_kv")
    books = {}
    for label in ("closed book", "open book"):
        books[label] = cli.sweep(model, tasks[label], "layers", args, "retrieval", tasks[label])
        print(cli.summary(books[label], ["acc", "acc_norm"], title=f"{tasks[label]} ({label})"))
    title = plots.run_title(
        "closed vs open book, layer skips",
        books,
        model=args.model,
        task=[tasks["closed book"], tasks["open book"]],
        limit=args.limit,
    )
    cli.save(plots.layer_curves(books, ["acc"], title=title), args, "retrieval_books")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))
