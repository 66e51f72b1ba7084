//! The paged KV cache: fixed-size blocks, reference counts, and prefix caching by block hash.
//!
//! Mirrors vLLM V1's block pool: a block whose reference count drops to zero goes to the
//! tail of a free queue but keeps its hash, so a later request with the same prefix can
//! revive it; allocation takes from the head, evicting the least recently freed block.
//! Usage is `1 − free / total`, as vLLM reports `kv_cache_usage_perc`.

use std::collections::HashMap;

/// Index of a block in the pool.
pub type BlockId = u32;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Block {
    refs: u32,
    hash: Option<u64>,
    // Intrusive doubly linked free queue, so a cached block can leave the middle in O(1).
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

/// The block pool of one replica.
#[derive(Debug, Clone)]
pub struct KvCache {
    blocks: Vec<Block>,
    free_head: u32,
    free_tail: u32,
    free_len: u32,
    cached: HashMap<u64, BlockId>,
}

impl KvCache {
    pub fn new(num_blocks: u32) -> Self {
        let mut cache = KvCache {
            blocks: (0..num_blocks)
                .map(|_| Block {
                    refs: 0,
                    hash: None,
                    prev: NIL,
                    next: NIL,
                    in_free_queue: false,
                })
                .collect(),
            free_head: NIL,
            free_tail: NIL,
            free_len: 0,
            cached: HashMap::new(),
        };
        for id in 0..num_blocks {
            cache.push_free(id);
        }
        cache
    }

    pub fn num_blocks(&self) -> u32 {
        self.blocks.len() as u32
    }

    /// Blocks that can be handed out now (free, including cached-but-unreferenced ones).
    pub fn num_free(&self) -> u32 {
        self.free_len
    }

    /// Blocks referenced by at least one request.
    pub fn num_used(&self) -> u32 {
        self.num_blocks() - self.free_len
    }

    /// Fraction of blocks in use, as vLLM's `kv_cache_usage_perc` (1.0 = full).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        f64::from(self.num_used()) / f64::from(self.num_blocks())
    }

    /// References held on `block` (for audits).
    pub fn refs(&self, block: BlockId) -> u32 {
        self.blocks[block as usize].refs
    }

    /// The longest run of leading `hashes` that are cached, without taking references.
    pub fn lookup_prefix(&self, hashes: &[u64]) -> Vec<BlockId> {
        hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect()
    }

    /// How many of `blocks` are currently unreferenced, i.e. would leave the free queue if
    /// touched. Needed to know whether an allocation that also revives cached blocks fits.
    pub fn count_unreferenced(&self, blocks: &[BlockId]) -> u32 {
        blocks
            .iter()
            .filter(|&&b| self.blocks[b as usize].refs == 0)
            .count() as u32
    }

    /// Takes a reference on cached blocks found by [`lookup_prefix`](Self::lookup_prefix).
    pub fn touch(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            if self.blocks[b as usize].refs == 0 {
                self.unlink_free(b);
            }
            self.blocks[b as usize].refs += 1;
        }
    }

    /// Allocates `n` fresh blocks, evicting cached ones in LRU order. `None` if fewer than
    /// `n` are free; nothing is allocated in that case.
    pub fn allocate(&mut self, n: u32) -> Option<Vec<BlockId>> {
        if n > self.free_len {
            return None;
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let id = self.free_head;
            self.unlink_free(id);
            let block = &mut self.blocks[id as usize];
            if let Some(h) = block.hash.take()
                && self.cached.get(&h) == Some(&id)
            {
                self.cached.remove(&h);
            }
            block.refs = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Records that `block` now holds the full content identified by `hash`, so later
    /// requests can share it. An already cached copy of the same content wins.
    pub fn register(&mut self, block: BlockId, hash: u64) {
        if self.cached.contains_key(&hash) {
            return;
        }
        self.blocks[block as usize].hash = Some(hash);
        self.cached.insert(hash, block);
    }

    /// Drops one reference on each block. Blocks are released tail first so that the end of
    /// a sequence, the least likely part to be shared, is evicted first.
    pub fn release(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let block = &mut self.blocks[b as usize];
            debug_assert!(block.refs > 0, "double free of block {b}");
            block.refs -= 1;
            if block.refs == 0 {
                if block.hash.is_none() {
                    // Uncached content is worthless: evict it before any cached block.
                    self.push_free_front(b);
                } else {
                    self.push_free(b);
                }
            }
        }
    }

    fn push_free(&mut self, id: BlockId) {
        let tail = self.free_tail;
        let block = &mut self.blocks[id as usize];
        block.prev = tail;
        block.next = NIL;
        block.in_free_queue = true;
        if tail == NIL {
            self.free_head = id;
        } else {
            self.blocks[tail as usize].next = id;
        }
        self.free_tail = id;
        self.free_len += 1;
    }

    fn push_free_front(&mut self, id: BlockId) {
        let head = self.free_head;
        let block = &mut self.blocks[id as usize];
        block.prev = NIL;
        block.next = head;
        block.in_free_queue = true;
        if head == NIL {
            self.free_tail = id;
        } else {
            self.blocks[head as usize].prev = id;
        }
        self.free_head = id;
        self.free_len += 1;
    }

    fn unlink_free(&mut self, id: BlockId) {
        let Block {
            prev,
            next,
            in_free_queue,
            ..
        } = self.blocks[id as usize];
        debug_assert!(in_free_queue, "block {id} is not free");
        if prev == NIL {
            self.free_head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.free_tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let block = &mut self.blocks[id as usize];
        block.prev = NIL;
        block.next = NIL;
        block.in_free_queue = false;
        self.free_len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_fails_whole_when_short() {
        let mut kv = KvCache::new(4);
        let a = kv.allocate(3).unwrap();
        assert_eq!(kv.num_free(), 1);
        assert!(kv.allocate(2).is_none());
        assert_eq!(kv.num_free(), 1, "a failed allocation must not leak blocks");
        kv.release(&a);
        assert_eq!(kv.num_free(), 4);
        assert_eq!(kv.usage(), 0.0);
    }

    #[test]
    fn released_cached_blocks_are_revived_by_prefix() {
        let mut kv = KvCache::new(4);
        let a = kv.allocate(2).unwrap();
        kv.register(a[0], 11);
        kv.register(a[1], 22);
        kv.release(&a);
        let hit = kv.lookup_prefix(&[11, 22, 33]);
        assert_eq!(hit, a);
        assert_eq!(kv.count_unreferenced(&hit), 2);
        kv.touch(&hit);
        assert_eq!(kv.num_used(), 2);
        // The prefix must match from the start.
        assert!(kv.lookup_prefix(&[22]).len() == 1);
        assert!(kv.lookup_prefix(&[99, 11]).is_empty());
    }

    #[test]
    fn eviction_prefers_uncached_then_least_recently_freed() {
        let mut kv = KvCache::new(3);
        let a = kv.allocate(3).unwrap();
        kv.register(a[0], 1);
        kv.register(a[1], 2);
        kv.release(&[a[0]]);
        kv.release(&[a[1]]);
        kv.release(&[a[2]]); // uncached: goes to the front
        let first = kv.allocate(1).unwrap();
        assert_eq!(first, vec![a[2]]);
        let second = kv.allocate(1).unwrap();
        assert_eq!(second, vec![a[0]], "hash 1 was freed first");
        assert!(
            kv.lookup_prefix(&[1]).is_empty(),
            "evicted content is forgotten"
        );
        assert_eq!(kv.lookup_prefix(&[2]), vec![a[1]]);
    }
}
