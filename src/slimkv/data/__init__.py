"""Real text for training and evaluation: registry corpus, tokenizers, memory-mapped token shards, packed batches.

    from slimkv.data import prepare_data
    data = prepare_data(vocab_size=8192, seq_len=256)      # fetch + tokenizer + shards, cached under ./data
    train = data.dataset("train", seed=0)                  # PackedDataset: batch(step, batch_size, rank, world_size)
    print(data.unigram_perplexity(), data.num_bytes("heldout"))

Pretrained GGUF models live in slimkv.data.pretrained (imported only when asked for: it needs transformers + gguf).
"""
from slimkv.data.corpus import (DEFAULT_SOURCES, DOCUMENT_SEPARATOR, SOURCES, CorpusInfo, FetchError,
                                data_root, fetch_corpus, read_split_documents)
from slimkv.data.prepare import PreparedData, prepare_data
from slimkv.data.shards import (PackedDataset, bits_per_byte, encode_documents, encode_split_file, load_shard,
                                unigram_perplexity, write_shard)
from slimkv.data.tokenizer import (EOS_TOKEN, document_separator_id, load_tokenizer, read_corpus_text,
                                   train_tokenizer)

__all__ = [
    "DEFAULT_SOURCES", "DOCUMENT_SEPARATOR", "EOS_TOKEN", "SOURCES", "CorpusInfo", "FetchError", "PackedDataset",
    "PreparedData", "bits_per_byte", "data_root", "document_separator_id", "encode_documents",
    "encode_split_file", "fetch_corpus", "load_shard", "load_tokenizer", "prepare_data", "read_corpus_text",
    "read_split_documents", "train_tokenizer", "unigram_perplexity", "write_shard",
]
