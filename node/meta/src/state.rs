//! The control-plane state and the pure function that applies commands to it.

use std::collections::{BTreeMap, BTreeSet};

use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use crate::{Command, Entry, LogId, Rejection, Response, Secret, StoredMembership, TransitionState};

/// Everything the control plane knows. Serialized as a whole into snapshots.
///
/// Maps are `BTreeMap` so that a snapshot's bytes depend only on the content, never on hashing
/// order, and so that listings come out sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateMachineData {
    /// The last log entry applied to this state.
    pub last_applied: Option<LogId>,
    /// The last membership config applied (Raft's own, kept here so snapshots carry it).
    pub last_membership: StoredMembership,
    /// Buckets by name.
    pub buckets: BTreeMap<String, BucketInfo>,
    /// Layout history: version to the layout as JSON. The current layout is the last one;
    /// older versions stay so that data still placed by them can be found while it moves.
    pub layouts: BTreeMap<u64, String>,
    /// S3 access keys by access key id.
    pub access_keys: BTreeMap<String, AccessKey>,
    /// The member registry: every node that joined, by name, with what layouts are built from.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// The layout transition in progress, or the last one (finished).
    pub transition: Option<TransitionState>,
    /// Drives that a finished transition drained (in a retired layout, not in the one that
    /// replaced it). What they still hold is stale, so no layout may place data on them
    /// again: a node comes back with new, empty drives.
    pub retired_drives: BTreeSet<String>,
}

/// A registered cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Where the node's internal RPC listens, `HOST:PORT`.
    pub rpc_addr: String,
    pub zone: String,
    /// The node's drives as (permanent drive id, capacity weight).
    pub drives: Vec<(String, u64)>,
}

/// A bucket and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketInfo {
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_nanos: u64,
}

/// An S3 access key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub secret_key: Secret,
}

/// The drive ids a layout (as committed, JSON) places data on; meta keeps layouts opaque
/// otherwise.
fn drive_ids(layout_json: &str) -> BTreeSet<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(layout_json) else {
        return BTreeSet::new();
    };
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .flat_map(|n| n["drives"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect()
}

impl StateMachineData {
    /// Applies one command. Pure and deterministic: the same state and command give the same
    /// result on every node. A rejected command leaves the state unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match self.try_apply(cmd) {
            Ok(()) => Response::Ok,
            Err(rejection) => Response::Rejected(rejection),
        }
    }

    fn try_apply(&mut self, cmd: &Command) -> Result<(), Rejection> {
        match cmd {
            Command::PutBucket { name, created_nanos } => {
                if self.buckets.contains_key(name) {
                    return Err(Rejection::BucketExists(name.clone()));
                }
                self.buckets.insert(
                    name.clone(),
                    BucketInfo {
                        created_nanos: *created_nanos,
                    },
                );
            }
            Command::DeleteBucket { name } => {
                if self.buckets.remove(name).is_none() {
                    return Err(Rejection::NoSuchBucket(name.clone()));
                }
            }
            Command::SetLayout { version, layout_json } => {
                if let Some(t) = self.transition.as_ref().filter(|t| t.is_running()) {
                    return Err(Rejection::TransitionRunning {
                        from: t.from,
                        to: t.to,
                    });
                }
                if let Some((current, _)) = self.current_layout()
                    && *version <= current
                {
                    return Err(Rejection::StaleLayout {
                        current,
                        proposed: *version,
                    });
                }
                self.layouts.insert(*version, layout_json.clone());
            }
            Command::StartTransition {
                from,
                to,
                partitions,
                started_nanos,
                kind,
            } => {
                if let Some(t) = self.transition.as_ref().filter(|t| t.is_running()) {
                    return Err(Rejection::TransitionRunning {
                        from: t.from,
                        to: t.to,
                    });
                }
                let invalid = |reason: String| Err(Rejection::InvalidTransition { reason });
                match self.current_layout() {
                    Some((current, _)) if current == *to => {}
                    current => {
                        return invalid(format!(
                            "version {to} is not the current layout ({:?})",
                            current.map(|c| c.0)
                        ));
                    }
                }
                if from >= to || !self.layouts.contains_key(from) {
                    return invalid(format!("version {from} is not a recorded layout older than {to}"));
                }
                let mut t = TransitionState::new(*from, *to, *partitions, *started_nanos);
                t.kind = kind.clone();
                self.transition = Some(t);
            }
            Command::TransitionSynced { to } => {
                let t = self.running_transition(*to)?;
                if t.phase == crate::Phase::Syncing {
                    t.phase = crate::Phase::Moving;
                }
            }
            Command::PartitionsDone { to, partitions } => {
                self.running_transition(*to)?.mark_done(partitions)?;
            }
            Command::PauseTransition { to, paused } => {
                self.running_transition(*to)?.paused = *paused;
            }
            Command::SetThrottle { to, throttle } => {
                self.running_transition(*to)?.throttle = *throttle;
            }
            Command::FinishTransition { to } => {
                let t = self.running_transition(*to)?;
                // nothing counts as moved before every node reads both layouts
                let left = match t.phase {
                    crate::Phase::Syncing => t.partitions,
                    _ => t.partitions - t.done_count(),
                };
                if left > 0 {
                    return Err(Rejection::TransitionUnfinished { to: *to, left });
                }
                t.phase = crate::Phase::Finished;
                let to = *to;
                let staying = self.layouts.get(&to).map(|j| drive_ids(j)).unwrap_or_default();
                let retired: Vec<String> = self
                    .layouts
                    .range(..to)
                    .flat_map(|(_, j)| drive_ids(j))
                    .filter(|d| !staying.contains(d))
                    .collect();
                self.retired_drives.extend(retired);
                self.layouts.retain(|v, _| *v >= to);
            }
            Command::PutAccessKey {
                access_key,
                secret_key,
            } => {
                if self.access_keys.contains_key(access_key) {
                    return Err(Rejection::AccessKeyExists(access_key.clone()));
                }
                self.access_keys.insert(
                    access_key.clone(),
                    AccessKey {
                        secret_key: secret_key.clone(),
                    },
                );
            }
            Command::DeleteAccessKey { access_key } => {
                if self.access_keys.remove(access_key).is_none() {
                    return Err(Rejection::NoSuchAccessKey(access_key.clone()));
                }
            }
            Command::PutNode {
                name,
                rpc_addr,
                zone,
                drives,
            } => {
                self.nodes.insert(
                    name.clone(),
                    NodeInfo {
                        rpc_addr: rpc_addr.clone(),
                        zone: zone.clone(),
                        drives: drives.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Applies one log entry: records it as applied, keeps membership changes, and runs the
    /// command of a normal entry. Returns the response for the entry's proposer.
    pub fn apply_entry(&mut self, entry: &Entry) -> Response {
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => Response::Ok,
            EntryPayload::Normal(cmd) => self.apply(cmd),
            EntryPayload::Membership(membership) => {
                self.last_membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                Response::Ok
            }
        }
    }

    /// The unfinished transition to layout `to`.
    fn running_transition(&mut self, to: u64) -> Result<&mut TransitionState, Rejection> {
        self.transition
            .as_mut()
            .filter(|t| t.to == to && t.is_running())
            .ok_or(Rejection::NoSuchTransition { to })
    }

    /// The current layout: its version and JSON.
    pub fn current_layout(&self) -> Option<(u64, &str)> {
        self.layouts.last_key_value().map(|(v, json)| (*v, json.as_str()))
    }

    /// The secret of an access key, if the key exists.
    pub fn secret_key(&self, access_key: &str) -> Option<&Secret> {
        self.access_keys.get(access_key).map(|k| &k.secret_key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::entry::RaftEntry;
    use openraft::{CommittedLeaderId, Membership};

    use super::*;

    fn put_bucket(name: &str) -> Command {
        Command::PutBucket {
            name: name.into(),
            created_nanos: 7,
        }
    }

    fn set_layout(version: u64) -> Command {
        Command::SetLayout {
            version,
            layout_json: format!("{{\"v\":{version}}}"),
        }
    }

    /// A finished drain retires the drives that left: they are recorded, and stay recorded
    /// across later transitions; drives still placed are not.
    #[test]
    fn a_finished_transition_records_the_drives_it_drained() {
        let layout = |v: u64, drives: &[&str]| {
            let drives: Vec<serde_json::Value> =
                drives.iter().map(|d| serde_json::json!({"id": d})).collect();
            Command::SetLayout {
                version: v,
                layout_json: serde_json::json!({"version": v, "nodes": [{"name": "n", "drives": drives}]})
                    .to_string(),
            }
        };
        // a transition to `to` that runs to its end
        let run = |s: &mut StateMachineData, to: u64| {
            let before = s.retired_drives.clone();
            assert_eq!(s.apply(&start(to - 1, to)), Response::Ok);
            s.apply(&Command::TransitionSynced { to });
            s.apply(&Command::PartitionsDone {
                to,
                partitions: (0..20).collect(),
            });
            assert_eq!(s.retired_drives, before, "nothing retires before the finish");
            assert_eq!(s.apply(&Command::FinishTransition { to }), Response::Ok);
        };
        let mut s = StateMachineData::default();
        s.apply(&layout(1, &["a", "b", "c"]));
        s.apply(&layout(2, &["a", "b"]));
        run(&mut s, 2);
        assert_eq!(s.retired_drives.iter().collect::<Vec<_>>(), vec!["c"]);
        s.apply(&layout(3, &["a", "b", "d"]));
        run(&mut s, 3);
        assert_eq!(s.retired_drives.iter().collect::<Vec<_>>(), vec!["c"]);
    }

    #[test]
    fn bucket_create_and_delete() {
        let mut s = StateMachineData::default();
        assert_eq!(s.apply(&put_bucket("a")), Response::Ok);
        assert_eq!(s.buckets["a"], BucketInfo { created_nanos: 7 });
        assert_eq!(
            s.apply(&put_bucket("a")),
            Response::Rejected(Rejection::BucketExists("a".into()))
        );
        assert_eq!(s.apply(&Command::DeleteBucket { name: "a".into() }), Response::Ok);
        assert!(s.buckets.is_empty());
    }

    #[test]
    fn deleting_a_missing_bucket_is_rejected_and_changes_nothing() {
        let mut s = StateMachineData::default();
        s.apply(&put_bucket("keep"));
        let before = s.clone();
        assert_eq!(
            s.apply(&Command::DeleteBucket { name: "gone".into() }),
            Response::Rejected(Rejection::NoSuchBucket("gone".into()))
        );
        assert_eq!(s, before);
    }

    fn start(from: u64, to: u64) -> Command {
        Command::StartTransition {
            from,
            to,
            partitions: 20,
            started_nanos: 9,
            kind: "rebalance".into(),
        }
    }

    #[test]
    fn a_transition_runs_from_a_recorded_layout_to_the_current_one_and_then_retires_the_old() {
        let mut s = StateMachineData::default();
        s.apply(&set_layout(1));
        s.apply(&set_layout(2));
        let invalid = |r: Response| matches!(r, Response::Rejected(Rejection::InvalidTransition { .. }));
        assert!(invalid(s.apply(&start(1, 3))), "to must be the current layout");
        assert!(invalid(s.apply(&start(2, 2))), "from must be older");
        assert!(invalid(s.apply(&start(0, 2))), "from must be recorded");
        assert_eq!(s.apply(&start(1, 2)), Response::Ok);
        let running = Response::Rejected(Rejection::TransitionRunning { from: 1, to: 2 });
        assert_eq!(
            s.apply(&set_layout(3)),
            running,
            "no second layout change meanwhile"
        );
        assert_eq!(s.apply(&start(1, 2)), running);

        // progress: marking again is fine, out of range rejects the command as a whole
        let done = |p: &[u32]| Command::PartitionsDone {
            to: 2,
            partitions: p.to_vec(),
        };
        assert_eq!(s.apply(&done(&[0, 3, 3, 19])), Response::Ok);
        assert_eq!(s.apply(&done(&[3])), Response::Ok);
        assert_eq!(
            s.apply(&done(&[4, 20])),
            Response::Rejected(Rejection::NoSuchPartition {
                partition: 20,
                partitions: 20
            })
        );
        let t = s.transition.as_ref().unwrap();
        assert_eq!(t.done_count(), 3);
        assert!(t.is_done(3) && t.is_done(19) && !t.is_done(4) && !t.is_done(99));

        // pause, throttle; commands for another transition are refused
        let throttle = crate::Throttle {
            bytes_per_sec: 1 << 20,
            concurrency: 2,
        };
        assert_eq!(
            s.apply(&Command::PauseTransition { to: 2, paused: true }),
            Response::Ok
        );
        assert_eq!(s.apply(&Command::SetThrottle { to: 2, throttle }), Response::Ok);
        assert_eq!(
            s.apply(&Command::PauseTransition { to: 5, paused: false }),
            Response::Rejected(Rejection::NoSuchTransition { to: 5 })
        );
        let t = s.transition.as_ref().unwrap();
        assert!(t.paused);
        assert_eq!(t.throttle, throttle);

        // finishing waits for the sync and every partition, then forgets the old layouts
        assert_eq!(s.transition.as_ref().unwrap().phase, crate::Phase::Syncing);
        assert_eq!(
            s.apply(&Command::FinishTransition { to: 2 }),
            Response::Rejected(Rejection::TransitionUnfinished { to: 2, left: 20 })
        );
        assert_eq!(s.apply(&Command::TransitionSynced { to: 2 }), Response::Ok);
        assert_eq!(s.apply(&Command::TransitionSynced { to: 2 }), Response::Ok);
        assert_eq!(s.transition.as_ref().unwrap().phase, crate::Phase::Moving);
        assert_eq!(
            s.apply(&Command::FinishTransition { to: 2 }),
            Response::Rejected(Rejection::TransitionUnfinished { to: 2, left: 17 })
        );
        assert_eq!(s.apply(&done(&(0..20).collect::<Vec<_>>())), Response::Ok);
        assert_eq!(s.apply(&Command::FinishTransition { to: 2 }), Response::Ok);
        assert_eq!(s.layouts.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert!(!s.transition.as_ref().unwrap().is_running());
        assert_eq!(
            s.apply(&done(&[1])),
            Response::Rejected(Rejection::NoSuchTransition { to: 2 })
        );
        // and layouts may change again
        assert_eq!(s.apply(&set_layout(3)), Response::Ok);
        assert_eq!(s.apply(&start(2, 3)), Response::Ok);

        // the state (a snapshot) round-trips, and one without a transition still loads
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StateMachineData>(&json).unwrap(), s);
        let old: StateMachineData = serde_json::from_str(r#"{"layouts":{"1":"{}"}}"#).unwrap();
        assert!(old.transition.is_none());
    }

    #[test]
    fn layout_version_must_increase() {
        let mut s = StateMachineData::default();
        assert_eq!(s.current_layout(), None);
        assert_eq!(s.apply(&set_layout(3)), Response::Ok);
        assert_eq!(s.current_layout(), Some((3, "{\"v\":3}")));
        assert_eq!(
            s.apply(&set_layout(3)),
            Response::Rejected(Rejection::StaleLayout {
                current: 3,
                proposed: 3
            })
        );
        assert_eq!(
            s.apply(&set_layout(2)),
            Response::Rejected(Rejection::StaleLayout {
                current: 3,
                proposed: 2
            })
        );
        assert_eq!(s.apply(&set_layout(5)), Response::Ok);
        assert_eq!(s.current_layout().map(|(v, _)| v), Some(5));
        // History is kept.
        assert_eq!(s.layouts.keys().copied().collect::<Vec<_>>(), vec![3, 5]);
    }

    #[test]
    fn access_keys() {
        let mut s = StateMachineData::default();
        let put = Command::PutAccessKey {
            access_key: "AK".into(),
            secret_key: Secret::new("sk"),
        };
        assert_eq!(s.apply(&put), Response::Ok);
        assert_eq!(s.secret_key("AK").map(Secret::expose), Some("sk"));
        assert_eq!(
            s.apply(&put),
            Response::Rejected(Rejection::AccessKeyExists("AK".into()))
        );
        let del = Command::DeleteAccessKey {
            access_key: "AK".into(),
        };
        assert_eq!(s.apply(&del), Response::Ok);
        assert_eq!(s.secret_key("AK"), None);
        assert_eq!(
            s.apply(&del),
            Response::Rejected(Rejection::NoSuchAccessKey("AK".into()))
        );
    }

    #[test]
    fn apply_entry_tracks_last_applied_and_membership() {
        let log_id = |i| LogId::new(CommittedLeaderId::new(1, 0), i);
        let mut s = StateMachineData::default();
        assert_eq!(s.apply_entry(&Entry::new_blank(log_id(1))), Response::Ok);
        assert_eq!(s.last_applied, Some(log_id(1)));

        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], None);
        s.apply_entry(&Entry::new_membership(log_id(2), membership.clone()));
        assert_eq!(
            s.last_membership,
            StoredMembership::new(Some(log_id(2)), membership)
        );

        let normal = Entry {
            log_id: log_id(3),
            payload: EntryPayload::Normal(put_bucket("b")),
        };
        assert_eq!(s.apply_entry(&normal), Response::Ok);
        assert_eq!(s.last_applied, Some(log_id(3)));
        assert!(s.buckets.contains_key("b"));
        // The membership is untouched by normal entries.
        assert_eq!(s.last_membership.log_id(), &Some(log_id(2)));
    }

    #[test]
    fn put_node_registers_and_replaces() {
        let mut s = StateMachineData::default();
        let put = |addr: &str, drives: Vec<(String, u64)>| Command::PutNode {
            name: "n1".into(),
            rpc_addr: addr.into(),
            zone: "z".into(),
            drives,
        };
        assert_eq!(s.apply(&put("a:1", vec![("d1".into(), 10)])), Response::Ok);
        assert_eq!(s.nodes["n1"].rpc_addr, "a:1");
        assert_eq!(s.apply(&put("b:2", vec![("d2".into(), 20)])), Response::Ok);
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes["n1"].rpc_addr, "b:2");
        assert_eq!(s.nodes["n1"].drives, vec![("d2".to_string(), 20)]);
    }

    #[test]
    fn snapshots_without_nodes_still_decode() {
        let s: StateMachineData = serde_json::from_str(r#"{"buckets":{}}"#).unwrap();
        assert!(s.nodes.is_empty());
    }

    #[test]
    fn json_round_trip() {
        let mut s = StateMachineData::default();
        s.apply(&put_bucket("a"));
        s.apply(&set_layout(1));
        s.apply(&Command::PutAccessKey {
            access_key: "AK".into(),
            secret_key: Secret::new("sk"),
        });
        let bytes = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<StateMachineData>(&bytes).unwrap(), s);
    }
}
