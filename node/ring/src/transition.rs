//! Layout changes as pure values: the placement a new layout gets from the previous one, and
//! the per-partition plan (shards to move, or partitions to re-encode) between two layouts.
//!
//! Shard `i` of an object lives on slot `i` of its partition's drive list, so what moves is
//! decided slot by slot. [`Layout::next`] keeps every drive that stays in a partition's set
//! at the slot it held and gives the vacated slots to the newcomers; the set itself comes
//! from the same weighted rendezvous choice as a fresh layout, so balance and spread over
//! nodes and zones are those of a fresh layout, and a change moves only the shards whose
//! drive left the set or whose slot goes to a new drive. The result is kept with the layout
//! ([`Slots`]) rather than recomputed from the chain of earlier layouts, so old layouts can
//! be retired.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{DriveRef, Error, Layout, NodeSpec, PARTITIONS, Placement, Redundancy};

/// A placement stored with its layout: for every partition in turn, the drive of each slot
/// as its index in the layout's drive order (nodes in order, each node's drives in order).
/// Serialised as a hex string (one byte per slot while the layout has at most 256 drives,
/// two above), which keeps a layout of 4096 partitions × 4 slots at 32 KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots(pub(crate) Vec<u16>);

impl Slots {
    /// Checks the table against `layout` and turns it into a [`Placement`].
    pub(crate) fn placement(&self, layout: &Layout) -> Result<Placement, Error> {
        let width = layout.redundancy.width();
        let refs: Vec<DriveRef> = layout
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(node, n)| (0..n.drives.len()).map(move |drive| DriveRef { node, drive }))
            .collect();
        let bad = |why: String| Err(Error::InvalidSlots(why));
        if self.0.len() != PARTITIONS as usize * width {
            return bad(format!(
                "{} slots for {PARTITIONS} partitions of width {width}",
                self.0.len()
            ));
        }
        let mut table = Vec::with_capacity(self.0.len());
        for (p, list) in self.0.chunks(width).enumerate() {
            let mut seen = HashSet::new();
            for &i in list {
                let Some(at) = refs.get(i as usize) else {
                    return bad(format!("partition {p} names drive {i} of {}", refs.len()));
                };
                if !seen.insert(i) {
                    return bad(format!("partition {p} names drive {i} twice"));
                }
                table.push(*at);
            }
        }
        Ok(Placement { width, table })
    }
}

impl Serialize for Slots {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wide = self.0.iter().any(|&i| i > 0xff);
        let mut out = String::with_capacity(2 + self.0.len() * if wide { 4 } else { 2 });
        out.push_str(if wide { "2:" } else { "1:" });
        for &i in &self.0 {
            if wide {
                out.push_str(&format!("{i:04x}"));
            } else {
                out.push_str(&format!("{i:02x}"));
            }
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Slots {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let s = String::deserialize(d)?;
        let (digits, hex) = match s.split_at_checked(2) {
            Some(("1:", hex)) => (2, hex),
            Some(("2:", hex)) => (4, hex),
            _ => return Err(D::Error::custom("slots: expected a \"1:\" or \"2:\" prefix")),
        };
        if !hex.len().is_multiple_of(digits) || !hex.is_ascii() {
            return Err(D::Error::custom("slots: truncated table"));
        }
        (0..hex.len())
            .step_by(digits)
            .map(|at| u16::from_str_radix(&hex[at..at + digits], 16))
            .collect::<Result<Vec<_>, _>>()
            .map(Slots)
            .map_err(|e| D::Error::custom(format!("slots: {e}")))
    }
}

impl Layout {
    /// The layout that follows this one with `redundancy` and `nodes`: version one higher,
    /// and (when the redundancy stays) a placement that keeps every surviving drive of a
    /// partition at its slot. A redundancy change re-encodes every object into new shards,
    /// so the new layout is placed afresh.
    pub fn next(&self, redundancy: Redundancy, nodes: Vec<NodeSpec>) -> Result<Layout, Error> {
        let mut to = Layout {
            version: self.version + 1,
            redundancy,
            nodes,
            slots: None,
        };
        let fresh = to.placement()?;
        if redundancy != self.redundancy {
            return Ok(to);
        }
        let old = self.placement()?;
        let old_id = |d: &DriveRef| self.nodes[d.node].drives[d.drive].id.as_str();
        let flat: HashMap<DriveRef, u16> = flat_indices(&to);
        let new_id = |d: &DriveRef| to.nodes[d.node].drives[d.drive].id.as_str();
        let width = redundancy.width();
        let mut table = Vec::with_capacity(PARTITIONS as usize * width);
        for p in 0..PARTITIONS {
            let set = fresh.drives(p);
            let mut slot: Vec<Option<DriveRef>> = old
                .drives(p)
                .iter()
                .map(|o| set.iter().find(|n| new_id(n) == old_id(o)).copied())
                .collect();
            let kept: Vec<DriveRef> = slot.iter().flatten().copied().collect();
            let mut newcomers = set.iter().filter(|n| !kept.contains(n));
            for s in slot.iter_mut().filter(|s| s.is_none()) {
                *s = newcomers.next().copied();
            }
            table.extend(
                slot.into_iter()
                    .map(|s| flat[&s.expect("a set as wide as the list")]),
            );
        }
        to.slots = Some(Slots(table));
        Ok(to)
    }
}

fn flat_indices(layout: &Layout) -> HashMap<DriveRef, u16> {
    let mut i = 0u16;
    let mut out = HashMap::new();
    for (node, n) in layout.nodes.iter().enumerate() {
        for drive in 0..n.drives.len() {
            out.insert(DriveRef { node, drive }, i);
            i += 1;
        }
    }
    out
}

/// What a layout change does, named for status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Drives were added (or weights changed): shards move onto the new drives.
    Rebalance,
    /// Drives leave: their shards move to the drives that stay.
    Drain,
    /// The redundancy changes: every object is re-encoded into new shards.
    Reencode,
}

/// One shard slot of a partition changing drive (by drive id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMove {
    pub slot: usize,
    pub from: String,
    pub to: String,
}

/// What happens to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every slot keeps its drive.
    Stay,
    /// Some slots change drive: their shards are copied as they are.
    Move(Vec<SlotMove>),
    /// The stripe changes: objects are re-encoded from the old drives onto the new ones.
    Reencode { from: Vec<String>, to: Vec<String> },
}

/// The plan from one layout to the next, partition by partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from_version: u64,
    pub to_version: u64,
    pub kind: Kind,
    pub steps: Vec<Step>,
    /// Drive ids in the old layout but not the new one.
    pub leaving: Vec<String>,
    /// Drive ids in the new layout but not the old one.
    pub arriving: Vec<String>,
    /// Slots each drive of the new layout must receive at least, whatever the placement:
    /// its new load above its old one (see [`Transition::minimum_slots`]).
    minimum: usize,
}

impl Transition {
    /// The plan from `from` to `to` (placed as they are: `to` normally comes from
    /// [`Layout::next`]).
    pub fn between(from: &Layout, to: &Layout) -> Result<Transition, Error> {
        let (pa, pb) = (from.placement()?, to.placement()?);
        let id = |l: &Layout, d: &DriveRef| l.nodes[d.node].drives[d.drive].id.clone();
        let ids = |l: &Layout| -> Vec<String> {
            l.nodes
                .iter()
                .flat_map(|n| n.drives.iter().map(|d| d.id.clone()))
                .collect()
        };
        let (old_ids, new_ids) = (ids(from), ids(to));
        let leaving: Vec<String> = old_ids.iter().filter(|d| !new_ids.contains(d)).cloned().collect();
        let arriving: Vec<String> = new_ids.iter().filter(|d| !old_ids.contains(d)).cloned().collect();
        let reencode = from.redundancy != to.redundancy;
        let kind = match (reencode, leaving.is_empty()) {
            (true, _) => Kind::Reencode,
            (false, false) => Kind::Drain,
            (false, true) => Kind::Rebalance,
        };
        let steps = (0..PARTITIONS)
            .map(|p| {
                let (a, b) = (pa.drives(p), pb.drives(p));
                if reencode {
                    return Step::Reencode {
                        from: a.iter().map(|d| id(from, d)).collect(),
                        to: b.iter().map(|d| id(to, d)).collect(),
                    };
                }
                let moves: Vec<SlotMove> = a
                    .iter()
                    .zip(b)
                    .enumerate()
                    .filter_map(|(slot, (x, y))| {
                        let (from, to) = (id(from, x), id(to, y));
                        (from != to).then_some(SlotMove { slot, from, to })
                    })
                    .collect();
                if moves.is_empty() {
                    Step::Stay
                } else {
                    Step::Move(moves)
                }
            })
            .collect();
        let load = |l: &Layout, p: &Placement| -> BTreeMap<String, usize> {
            p.load().into_iter().map(|(d, n)| (id(l, &d), n)).collect()
        };
        let (la, lb) = (load(from, &pa), load(to, &pb));
        let minimum = if reencode {
            lb.values().sum()
        } else {
            lb.iter()
                .map(|(d, n)| n.saturating_sub(la.get(d).copied().unwrap_or(0)))
                .sum()
        };
        Ok(Transition {
            from_version: from.version,
            to_version: to.version,
            kind,
            steps,
            leaving,
            arriving,
            minimum,
        })
    }

    /// Shard slots that change drive (every slot of every partition for a re-encode).
    pub fn moved_slots(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Stay => 0,
                Step::Move(m) => m.len(),
                Step::Reencode { to, .. } => to.len(),
            })
            .sum()
    }

    /// The fewest slots any placement of the new layout could move: every drive must gain
    /// at least the slots its new load holds above its old one.
    pub fn minimum_slots(&self) -> usize {
        self.minimum
    }

    /// Partitions with anything to do.
    pub fn busy_partitions(&self) -> impl Iterator<Item = (u32, &Step)> {
        self.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != Step::Stay)
            .map(|(p, s)| (p as u32, s))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::tests::{layout, uniform};

    /// The layout after `from` with `to`'s nodes and redundancy, placed from `from`.
    fn after(from: &Layout, to: &Layout) -> Layout {
        from.next(to.redundancy, to.nodes.clone()).unwrap()
    }

    fn ratio(from: &Layout, to: &Layout) -> (usize, usize) {
        let t = Transition::between(from, &after(from, to)).unwrap();
        (t.moved_slots(), t.minimum_slots())
    }

    #[test]
    fn fresh_placement_moves_far_more_than_the_minimum() {
        // the measure sees what placing the new layout afresh does: every later slot shifts
        for (a, b, k, m) in [(4, 5, 2, 2), (4, 8, 2, 2), (6, 8, 4, 2), (8, 9, 4, 2)] {
            let (from, to) = (uniform(a, 1, 1, k, m), uniform(b, 1, 1, k, m));
            let fresh = Transition::between(&from, &to).unwrap();
            assert!(
                fresh.moved_slots() as f64 > 1.5 * fresh.minimum_slots() as f64,
                "{a}->{b} nodes ({k}+{m}): fresh placement moved {} slots, minimum {}",
                fresh.moved_slots(),
                fresh.minimum_slots()
            );
            let (moved, minimum) = ratio(&from, &to);
            println!(
                "{a}->{b} nodes ({k}+{m}): minimum {minimum} slots, placed afresh {} ({:.2}x), placed from the previous layout {moved} ({:.2}x)",
                fresh.moved_slots(),
                fresh.moved_slots() as f64 / minimum as f64,
                moved as f64 / minimum as f64
            );
            assert_eq!(fresh.minimum_slots(), minimum, "same sets, same minimum");
            assert!(
                moved as f64 <= 1.05 * minimum as f64,
                "{a}->{b} nodes ({k}+{m}): moved {moved} slots, minimum {minimum}"
            );
        }
    }

    #[test]
    fn an_unchanged_layout_moves_nothing_and_keeps_its_placement() {
        let l = uniform(5, 2, 1, 2, 2);
        let same = l.next(l.redundancy, l.nodes.clone()).unwrap();
        assert_eq!(same.version, l.version + 1);
        assert_eq!(same.placement().unwrap(), l.placement().unwrap());
        let t = Transition::between(&l, &same).unwrap();
        assert_eq!((t.moved_slots(), t.busy_partitions().count()), (0, 0));
        assert_eq!(t.kind, Kind::Rebalance);
    }

    #[test]
    fn stored_slots_survive_json_and_are_checked() {
        let from = uniform(4, 1, 1, 2, 2);
        let to = after(&from, &uniform(6, 1, 1, 2, 2));
        let json = serde_json::to_string(&to).unwrap();
        assert!(
            json.len() < 40_000,
            "a 4-wide layout stays small: {} bytes",
            json.len()
        );
        let back: Layout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, to);
        assert_eq!(back.placement().unwrap(), to.placement().unwrap());
        // a layout without slots (written before they existed) is placed afresh
        let plain = serde_json::to_string(&from).unwrap();
        assert!(!plain.contains("slots"));
        // a table that does not fit the layout is an error, not a wrong placement
        let mut short = to.clone();
        short.nodes.pop();
        assert!(matches!(short.placement(), Err(Error::InvalidSlots(_))));
        let mut twice = to.clone();
        let Some(Slots(t)) = twice.slots.as_mut() else {
            unreachable!()
        };
        t[1] = t[0];
        assert!(matches!(twice.placement(), Err(Error::InvalidSlots(_))));
        assert!(serde_json::from_str::<Slots>("\"3:00\"").is_err());
        assert!(serde_json::from_str::<Slots>("\"1:0\"").is_err());
    }

    #[test]
    fn wide_layouts_store_two_bytes_per_slot() {
        let from = uniform(130, 2, 1, 2, 2);
        let to = after(&from, &uniform(131, 2, 1, 2, 2));
        let json = serde_json::to_string(&to).unwrap();
        assert!(json.contains("\"2:"));
        let back: Layout = serde_json::from_str(&json).unwrap();
        assert_eq!(back.placement().unwrap(), to.placement().unwrap());
    }

    #[test]
    fn a_redundancy_change_reencodes_every_partition() {
        let from = uniform(6, 1, 1, 2, 2);
        let to = after(&from, &uniform(6, 1, 1, 4, 2));
        assert!(to.slots.is_none(), "a new stripe is placed afresh");
        let t = Transition::between(&from, &to).unwrap();
        assert_eq!(t.kind, Kind::Reencode);
        assert_eq!(t.busy_partitions().count(), PARTITIONS as usize);
        let Step::Reencode { from: a, to: b } = &t.steps[7] else {
            panic!("{:?}", t.steps[7])
        };
        assert_eq!((a.len(), b.len()), (4, 6));
    }

    #[test]
    fn draining_a_node_moves_only_its_shards_to_the_others() {
        let from = uniform(6, 2, 1, 2, 2);
        let mut nodes = from.nodes.clone();
        let gone = nodes.remove(2);
        let to = from.next(from.redundancy, nodes).unwrap();
        let t = Transition::between(&from, &to).unwrap();
        assert_eq!(t.kind, Kind::Drain);
        let gone: Vec<String> = gone.drives.iter().map(|d| d.id.clone()).collect();
        assert_eq!(t.leaving, gone);
        let held: usize = from
            .placement()
            .unwrap()
            .load()
            .iter()
            .filter(|(d, _)| d.node == 2)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(t.moved_slots(), held, "exactly the slots the node held move");
        for (_, step) in t.busy_partitions() {
            let Step::Move(moves) = step else {
                panic!("{step:?}")
            };
            assert!(moves.iter().all(|m| gone.contains(&m.from)));
        }
    }

    /// A cluster growing and shrinking through several layouts: `nodes[i]` drive counts.
    fn chain(sizes: &[usize], drives: usize, zones: usize, k: usize, m: usize) -> Vec<Layout> {
        let mut out = vec![uniform(sizes[0], drives, zones, k, m)];
        for &n in &sizes[1..] {
            let prev = out.last().unwrap();
            let next = prev
                .next(prev.redundancy, uniform(n, drives, zones, k, m).nodes)
                .unwrap();
            out.push(next);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn every_change_moves_the_minimum_and_stays_balanced_and_spread(
            sizes in proptest::collection::vec(4usize..12, 2..5),
            drives in 1usize..3,
            zones in 1usize..4,
            k in 1usize..4,
            m in 0usize..3,
        ) {
            prop_assume!(k + m <= sizes.iter().copied().min().unwrap());
            let layouts = chain(&sizes, drives, zones, k, m);
            for pair in layouts.windows(2) {
                let t = Transition::between(&pair[0], &pair[1]).unwrap();
                let (moved, minimum) = (t.moved_slots(), t.minimum_slots());
                prop_assert!(
                    moved as f64 <= (minimum as f64 * 1.05).max(minimum as f64 + 8.0),
                    "{} -> {} nodes: moved {moved}, minimum {minimum}",
                    pair[0].nodes.len(), pair[1].nodes.len()
                );
                // a slot only ever changes to a drive that was not in the partition before
                let before = pair[0].placement().unwrap();
                let id = |l: &Layout, d: &DriveRef| l.nodes[d.node].drives[d.drive].id.clone();
                for (p, step) in t.busy_partitions() {
                    let Step::Move(moves) = step else { panic!("{step:?}") };
                    let old: HashSet<String> = before.drives(p).iter().map(|d| id(&pair[0], d)).collect();
                    prop_assert!(moves.iter().all(|mv| !old.contains(&mv.to)));
                }
            }
            let last = layouts.last().unwrap();
            let p = last.placement().unwrap();
            let width = k + m;
            let ideal = (PARTITIONS as usize * width) as f64 / last.drive_count() as f64;
            // (zones of unequal size cannot balance: spreading over zones comes first)
            if last.nodes.len().is_multiple_of(zones) {
                for (d, n) in p.load() {
                    let r = n as f64 / ideal;
                    prop_assert!((0.75..1.25).contains(&r), "drive {d:?} holds {n}, ideal {ideal}");
                }
            }
            let node_count = last.nodes.len();
            let zone_count = zones.min(node_count);
            for part in 0..PARTITIONS {
                let on = p.drives(part);
                let nodes: HashSet<_> = on.iter().map(|d| d.node).collect();
                let in_zones: HashSet<_> = on.iter().map(|d| &last.nodes[d.node].zone).collect();
                prop_assert_eq!(nodes.len(), width.min(node_count), "partition {} nodes", part);
                prop_assert_eq!(in_zones.len(), width.min(zone_count), "partition {} zones", part);
            }
        }

        #[test]
        fn weights_decide_shares_after_a_change(extra in 1usize..4) {
            // a bigger drive joining takes a share proportional to its weight
            let base = layout(&[("a", "z", &[100]), ("b", "z", &[100]), ("c", "z", &[100]), ("d", "z", &[100])], 1, 0);
            let mut nodes = base.nodes.clone();
            nodes.push(NodeSpec {
                name: "e".into(),
                zone: "z".into(),
                drives: vec![crate::DriveSpec { id: "e-d0".into(), weight: 100 * extra as u64 }],
            });
            let to = base.next(base.redundancy, nodes).unwrap();
            let load = to.placement().unwrap().load();
            let e = load[&DriveRef { node: 4, drive: 0 }] as f64;
            let a = load[&DriveRef { node: 0, drive: 0 }] as f64;
            prop_assert!((e / a / extra as f64 - 1.0).abs() < 0.25, "e holds {e}, a holds {a}");
        }
    }
}
