"""Pipeline stages of build_corpus, one module per paper step."""
