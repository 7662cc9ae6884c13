//! A map keyed by channel number, cheap for traffic that comes in runs on one channel.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a channel number with one multiplication (keys are u16 and chosen by the user of the
/// library, so SipHash's flooding resistance buys nothing and costs ~30 instructions a
/// message). It hashes any small integer key the same way: the driver's reactor keys its
/// sources by a token it hands out itself.
#[derive(Default)]
pub struct ChannelHasher(u64);

impl Hasher for ChannelHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u16(&mut self, v: u16) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, v: usize) {
        self.0 = (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Values by channel, with the channel used last kept out of the hash map (traffic comes in
/// runs: a run costs one comparison per access).
#[derive(Debug)]
pub struct ChannelMap<V> {
    map: HashMap<u16, V, BuildHasherDefault<ChannelHasher>>,
    last: Option<(u16, V)>,
}

impl<V> Default for ChannelMap<V> {
    fn default() -> Self {
        ChannelMap {
            map: HashMap::default(),
            last: None,
        }
    }
}

impl<V> ChannelMap<V> {
    /// The value of `channel`, made with `make` if absent.
    // (Inlined down to the last channel's check, which is all a run of messages on one
    // channel needs; the swap is out of line.)
    #[inline(always)]
    pub fn get_or_insert_with(&mut self, channel: u16, make: impl FnOnce() -> V) -> &mut V {
        if !matches!(&self.last, Some((c, _)) if *c == channel) {
            self.swap_in(channel, make);
        }
        &mut self.last.as_mut().expect("set above").1
    }

    /// Makes `channel`'s value (made with `make` if absent) the last one, for
    /// [`ChannelMap::get_or_insert_with`].
    #[inline(never)]
    fn swap_in(&mut self, channel: u16, make: impl FnOnce() -> V) {
        let v = self.map.remove(&channel).unwrap_or_else(make);
        if let Some((c, old)) = self.last.replace((channel, v)) {
            self.map.insert(c, old);
        }
    }

    /// The value of `channel`, if present.
    #[inline]
    pub fn get_mut(&mut self, channel: u16) -> Option<&mut V> {
        match &mut self.last {
            Some((c, v)) if *c == channel => Some(v),
            _ => self.map.get_mut(&channel),
        }
    }

    /// The value of `channel`, if present.
    #[inline]
    pub fn get(&self, channel: u16) -> Option<&V> {
        match &self.last {
            Some((c, v)) if *c == channel => Some(v),
            _ => self.map.get(&channel),
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &V)> {
        self.last
            .iter()
            .map(|(c, v)| (*c, v))
            .chain(self.map.iter().map(|(c, v)| (*c, v)))
    }

    /// Every entry, mutably, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut V)> {
        self.last
            .iter_mut()
            .map(|(c, v)| (*c, v))
            .chain(self.map.iter_mut().map(|(c, v)| (*c, v)))
    }

    /// Removes every entry for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(u16, &mut V) -> bool) {
        if let Some((c, v)) = &mut self.last {
            if !keep(*c, v) {
                self.last = None;
            }
        }
        self.map.retain(|c, v| keep(*c, v));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len() + usize::from(self.last.is_some())
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_switching_channels() {
        let mut m: ChannelMap<u32> = ChannelMap::default();
        *m.get_or_insert_with(1, || 0) += 1;
        *m.get_or_insert_with(2, || 0) += 10;
        *m.get_or_insert_with(1, || 0) += 1;
        assert_eq!(m.get(1), Some(&2));
        assert_eq!(m.get(2), Some(&10));
        assert_eq!(m.get(3), None);
        assert_eq!(m.len(), 2);
        let mut all: Vec<_> = m.iter().map(|(c, v)| (c, *v)).collect();
        all.sort();
        assert_eq!(all, vec![(1, 2), (2, 10)]);
        m.retain(|c, _| c == 2);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get_mut(2).copied(), Some(10));
    }
}
