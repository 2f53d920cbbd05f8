//! Placement on the hash ring: which drives hold the shards of an object.
//!
//! Pure code, no I/O. A [`Layout`] is a versioned description of the nodes, their zones and
//! drives (with capacities) and the redundancy scheme. Every object key hashes to one of
//! [`PARTITIONS`] partitions, and every partition is assigned to an ordered list of `k + m`
//! drives: shard `i` of every object in that partition lives on drive `i` of the list.
//!
//! Assignment is weighted rendezvous hashing with failure-domain constraints: for each
//! partition every drive gets a pseudo-random score scaled by its capacity, and drives are
//! taken best score first while preferring zones, then nodes, that hold fewest shards of the
//! partition so far. Rendezvous hashing changes a partition's *set* only where a new drive
//! wins (or a removed drive held) a place; [`Layout::next`] then keeps every drive that
//! stays at its slot, so that only the shards whose drive changes move (see `transition`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod transition;
pub use transition::{Kind, SlotMove, Slots, Step, Transition};

/// Number of partitions. Thousands rather than hundreds so that a single added node gets a
/// fair share of the data.
pub const PARTITIONS: u32 = 4096;

/// Largest stripe width (`k + m`) supported.
pub const MAX_SHARDS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid redundancy {0:?}: expected K+M with K >= 1, M >= 0 and K+M <= {MAX_SHARDS}")]
    InvalidRedundancy(String),
    #[error("redundancy {k}+{m} needs {need} drives but the layout has {have}")]
    NotEnoughDrives {
        k: usize,
        m: usize,
        need: usize,
        have: usize,
    },
    #[error("drive {0} appears more than once in the layout")]
    DuplicateDrive(String),
    #[error("drive {0} has zero capacity weight")]
    ZeroWeight(String),
    #[error("the layout's stored placement does not fit it: {0}")]
    InvalidSlots(String),
}

/// The redundancy scheme: `k` data shards and `m` parity shards per stripe.
/// Plain replication is `k = 1`; a single drive without redundancy is `1+0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Redundancy {
    pub k: usize,
    pub m: usize,
}

impl Redundancy {
    pub fn new(k: usize, m: usize) -> Result<Self, Error> {
        if k == 0 || k + m > MAX_SHARDS {
            return Err(Error::InvalidRedundancy(format!("{k}+{m}")));
        }
        Ok(Self { k, m })
    }

    /// The default scheme for a set of `drives` drives: half parity for small sets, about a
    /// quarter (at least 2) for wider ones, like the defaults users know from other stores.
    pub fn default_for(drives: usize) -> Self {
        let n = drives.clamp(1, 16);
        let m = match n {
            1 => 0,
            2 | 3 => 1,
            4 | 5 => 2,
            _ => (n / 4).max(2),
        };
        Self { k: n - m, m }
    }

    pub fn width(&self) -> usize {
        self.k + self.m
    }

    /// Shards that must be durably written before a write is acknowledged: at least the
    /// data shards (so the object can be decoded) and a strict majority of the set (so that
    /// two write quorums always overlap and, with the read quorum below, every read meets
    /// the newest acknowledged write). 4+2 and 3+2 keep accepting writes with `m` drives
    /// down; 2+2 and 1+1 need more than half of the set.
    pub fn write_quorum(&self) -> usize {
        self.k.max(self.width() / 2 + 1)
    }

    /// Metadata records that must answer a read so that it overlaps every write quorum.
    pub fn read_quorum(&self) -> usize {
        self.width() - self.write_quorum() + 1
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

impl FromStr for Redundancy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidRedundancy(s.to_string());
        let (k, m) = s.split_once('+').ok_or_else(bad)?;
        let k = k.trim().parse().map_err(|_| bad())?;
        let m = m.trim().parse().map_err(|_| bad())?;
        Redundancy::new(k, m).map_err(|_| bad())
    }
}

/// One drive of a node. `id` is the drive's permanent identity (written on the drive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveSpec {
    pub id: String,
    /// Relative capacity weight (for example GiB). Must be positive.
    pub weight: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub zone: String,
    pub drives: Vec<DriveSpec>,
}

/// A versioned description of the cluster's storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub version: u64,
    pub redundancy: Redundancy,
    pub nodes: Vec<NodeSpec>,
    /// The placement, when it was derived from the previous layout ([`Layout::next`]);
    /// absent for a first layout, which is placed by rendezvous hashing alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Slots>,
}

/// Where one drive sits, as an index into the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DriveRef {
    pub node: usize,
    pub drive: usize,
}

/// The computed assignment of every partition to its ordered drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    width: usize,
    table: Vec<DriveRef>,
}

impl Placement {
    /// The ordered drives of `partition`: shard `i` lives on element `i`.
    pub fn drives(&self, partition: u32) -> &[DriveRef] {
        let start = partition as usize * self.width;
        &self.table[start..start + self.width]
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// How many shard slots each drive holds, for balance reports.
    pub fn load(&self) -> BTreeMap<DriveRef, usize> {
        let mut load = BTreeMap::new();
        for d in &self.table {
            *load.entry(*d).or_insert(0) += 1;
        }
        load
    }
}

impl Layout {
    /// The placement of every partition: the stored one when the layout has it, otherwise
    /// computed from the layout alone.
    pub fn placement(&self) -> Result<Placement, Error> {
        let fresh = self.fresh_placement()?;
        match &self.slots {
            Some(slots) => slots.placement(self),
            None => Ok(fresh),
        }
    }

    /// The rendezvous placement of the layout, ignoring any stored one: the set of drives of
    /// each partition, in score order. Also checks the layout (drives, weights, width).
    fn fresh_placement(&self) -> Result<Placement, Error> {
        let width = self.redundancy.width();
        let mut drives = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut zones: BTreeMap<&str, usize> = BTreeMap::new();
        for (ni, node) in self.nodes.iter().enumerate() {
            let zone_count = zones.len();
            let zone = *zones.entry(node.zone.as_str()).or_insert(zone_count);
            for (di, d) in node.drives.iter().enumerate() {
                if !seen.insert(d.id.as_str()) {
                    return Err(Error::DuplicateDrive(d.id.clone()));
                }
                if d.weight == 0 {
                    return Err(Error::ZeroWeight(d.id.clone()));
                }
                drives.push(Candidate {
                    at: DriveRef { node: ni, drive: di },
                    zone,
                    seed: hash64(d.id.as_bytes()),
                    weight: d.weight as f64,
                });
            }
        }
        if drives.len() < width {
            return Err(Error::NotEnoughDrives {
                k: self.redundancy.k,
                m: self.redundancy.m,
                need: width,
                have: drives.len(),
            });
        }
        let mut table = Vec::with_capacity(PARTITIONS as usize * width);
        let mut scored: Vec<(f64, usize)> = Vec::with_capacity(drives.len());
        let mut zone_used = vec![0usize; zones.len()];
        let mut node_used = vec![0usize; self.nodes.len()];
        let mut taken = vec![false; drives.len()];
        for p in 0..PARTITIONS {
            scored.clear();
            scored.extend(drives.iter().enumerate().map(|(i, c)| (c.score(p), i)));
            scored.sort_by(|a, b| a.0.total_cmp(&b.0));
            zone_used.iter_mut().for_each(|z| *z = 0);
            node_used.iter_mut().for_each(|n| *n = 0);
            taken.iter_mut().for_each(|t| *t = false);
            for _ in 0..width {
                // best-scored drive among those in the least-used zone, then least-used node
                let (_, pick) = scored
                    .iter()
                    .filter(|(_, i)| !taken[*i])
                    .map(|&(_, i)| {
                        let c = &drives[i];
                        ((zone_used[c.zone], node_used[c.at.node]), i)
                    })
                    .min_by_key(|(rank, _)| *rank)
                    .expect("enough drives checked above");
                taken[pick] = true;
                zone_used[drives[pick].zone] += 1;
                node_used[drives[pick].at.node] += 1;
                table.push(drives[pick].at);
            }
        }
        Ok(Placement { width, table })
    }

    pub fn drive_count(&self) -> usize {
        self.nodes.iter().map(|n| n.drives.len()).sum()
    }
}

struct Candidate {
    at: DriveRef,
    zone: usize,
    seed: u64,
    weight: f64,
}

impl Candidate {
    /// Weighted rendezvous score: lower wins. `-ln(u) / w` is exponentially distributed
    /// with rate `w`, so a drive wins a share of partitions proportional to its weight.
    fn score(&self, partition: u32) -> f64 {
        let h = mix64(self.seed ^ mix64(partition as u64 + 1));
        // 53 random bits in (0, 1]
        let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
        -u.ln() / self.weight
    }
}

/// The partition an object belongs to.
pub fn partition_of(bucket: &str, key: &str) -> u32 {
    let mut h = hash64(bucket.as_bytes());
    h = mix64(h ^ hash64(key.as_bytes()));
    (h % PARTITIONS as u64) as u32
}

/// A stable 64-bit hash (FNV-1a followed by a strong finaliser). Stable across releases
/// and platforms because placement depends on it.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

fn mix64(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    pub(crate) fn layout(nodes: &[(&str, &str, &[u64])], k: usize, m: usize) -> Layout {
        Layout {
            version: 1,
            redundancy: Redundancy::new(k, m).unwrap(),
            nodes: nodes
                .iter()
                .map(|(name, zone, weights)| NodeSpec {
                    name: name.to_string(),
                    zone: zone.to_string(),
                    drives: weights
                        .iter()
                        .enumerate()
                        .map(|(i, w)| DriveSpec {
                            id: format!("{name}-d{i}"),
                            weight: *w,
                        })
                        .collect(),
                })
                .collect(),
            slots: None,
        }
    }

    pub(crate) fn uniform(nodes: usize, drives: usize, zones: usize, k: usize, m: usize) -> Layout {
        let weights = vec![100u64; drives];
        let names: Vec<(String, String)> = (0..nodes)
            .map(|i| (format!("n{i}"), format!("z{}", i % zones.max(1))))
            .collect();
        let spec: Vec<(&str, &str, &[u64])> = names
            .iter()
            .map(|(n, z)| (n.as_str(), z.as_str(), weights.as_slice()))
            .collect();
        layout(&spec, k, m)
    }

    #[test]
    fn redundancy_parsing_and_quorums() {
        assert_eq!("2+2".parse::<Redundancy>().unwrap(), Redundancy { k: 2, m: 2 });
        assert!("0+2".parse::<Redundancy>().is_err());
        assert!("2-2".parse::<Redundancy>().is_err());
        assert!("30+3".parse::<Redundancy>().is_err());
        let r = Redundancy::new(2, 2).unwrap();
        assert_eq!((r.write_quorum(), r.read_quorum()), (3, 2));
        let r = Redundancy::new(1, 0).unwrap();
        assert_eq!((r.write_quorum(), r.read_quorum()), (1, 1));
        let q = |k, m| {
            let r = Redundancy::new(k, m).unwrap();
            (r.write_quorum(), r.read_quorum())
        };
        // (write, read): writes and reads survive m drives down where k > m
        assert_eq!(q(4, 2), (4, 3));
        assert_eq!(q(3, 2), (3, 3));
        assert_eq!(q(2, 1), (2, 2));
        assert_eq!(q(1, 2), (2, 2));
        assert_eq!(q(12, 4), (12, 5));
        // every read quorum meets every write quorum, and writes can be decoded
        for k in 1..=16 {
            for m in 0..=8 {
                let r = Redundancy::new(k, m).unwrap();
                assert!(r.write_quorum() + r.read_quorum() > r.width());
                assert!(2 * r.write_quorum() > r.width());
                assert!(r.write_quorum() >= k);
            }
        }
        assert_eq!(Redundancy::default_for(1), Redundancy { k: 1, m: 0 });
        assert_eq!(Redundancy::default_for(4), Redundancy { k: 2, m: 2 });
        assert_eq!(Redundancy::default_for(8), Redundancy { k: 6, m: 2 });
        assert_eq!(Redundancy::default_for(16), Redundancy { k: 12, m: 4 });
    }

    #[test]
    fn too_few_drives_is_an_error() {
        let l = uniform(1, 3, 1, 2, 2);
        assert_eq!(
            l.placement().unwrap_err(),
            Error::NotEnoughDrives {
                k: 2,
                m: 2,
                need: 4,
                have: 3
            }
        );
    }

    #[test]
    fn single_node_uses_every_drive_once_per_partition() {
        let p = uniform(1, 4, 1, 2, 2).placement().unwrap();
        for part in 0..PARTITIONS {
            let set: HashSet<_> = p.drives(part).iter().collect();
            assert_eq!(set.len(), 4);
        }
    }

    #[test]
    fn shards_spread_over_distinct_nodes_and_zones() {
        let p = uniform(6, 2, 3, 2, 1).placement().unwrap();
        let l = uniform(6, 2, 3, 2, 1);
        for part in 0..PARTITIONS {
            let nodes: HashSet<_> = p.drives(part).iter().map(|d| d.node).collect();
            assert_eq!(nodes.len(), 3, "partition {part} not on distinct nodes");
            let zones: HashSet<_> = p.drives(part).iter().map(|d| &l.nodes[d.node].zone).collect();
            assert_eq!(zones.len(), 3, "partition {part} not on distinct zones");
        }
    }

    #[test]
    fn weight_decides_share() {
        let l = layout(
            &[
                ("a", "z", &[100]),
                ("b", "z", &[100]),
                ("c", "z", &[200]),
                ("d", "z", &[100]),
            ],
            1,
            0,
        );
        let load = l.placement().unwrap().load();
        let c = load[&DriveRef { node: 2, drive: 0 }] as f64;
        let a = load[&DriveRef { node: 0, drive: 0 }] as f64;
        assert!(
            (1.6..2.4).contains(&(c / a)),
            "double weight should hold about twice: {c} vs {a}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        #[test]
        fn balanced_within_tolerance(nodes in 4usize..10, drives in 1usize..4, k in 1usize..4, m in 0usize..3) {
            prop_assume!(k + m <= nodes);
            let l = uniform(nodes, drives, 1, k, m);
            let load = l.placement().unwrap().load();
            let ideal = (PARTITIONS as usize * (k + m)) as f64 / (nodes * drives) as f64;
            for (d, n) in load {
                let ratio = n as f64 / ideal;
                prop_assert!((0.75..1.25).contains(&ratio), "drive {d:?} holds {n}, ideal {ideal}");
            }
        }

        #[test]
        fn partition_of_is_spread(keys in proptest::collection::vec("[a-z0-9/]{1,20}", 200)) {
            let parts: HashSet<_> = keys.iter().map(|k| partition_of("b", k)).collect();
            let distinct: HashSet<_> = keys.iter().collect();
            prop_assert!(parts.len() * 10 >= distinct.len() * 9);
        }
    }
}
