//! The ledger's vocabulary: each word an enum, stored in the database as the same string
//! it has always been, so rows written by older cells still read.

use std::fmt;

/// Defines a string-backed enum: `as_str` gives the stored word, `FromStr` reads it back,
/// serde writes and reads the same word.
macro_rules! words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word as stored.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(UnknownWord { kind: stringify!($name), word: other.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = String::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A word the ledger does not know (a row written by a newer version, or by hand).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown {kind} {word:?} in the ledger")]
pub struct UnknownWord {
    kind: &'static str,
    word: String,
}

words! {
    /// Where a job is: `queued → running → succeeded | failed | dead`.
    JobState {
        Queued = "queued",
        Running = "running",
        /// A chunked title split into child jobs, waiting for the last of them to
        /// commit (see [`crate::chunk`]).
        Waiting = "waiting",
        Succeeded = "succeeded",
        /// Failed for good: the media or the pipeline is at fault.
        Failed = "failed",
        /// Every attempt spent on failures that might have passed.
        Dead = "dead",
        /// Stopped by hand (`cellfarm cancel`): nothing published, `cellfarm retry`
        /// runs it again.
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// True for a state a job never leaves without being reprocessed.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Dead | JobState::Cancelled
        )
    }
}

words! {
    /// How one attempt ended (`job_attempts.outcome`).
    AttemptOutcome {
        Succeeded = "succeeded",
        /// Another attempt held the job by the time this one committed.
        Superseded = "superseded",
        /// Failed in a way that may pass; the job went back to its queue.
        Retry = "retry",
        Failed = "failed",
        /// Given back on a plain stop, without spending an attempt.
        HandedBack = "handed_back",
        /// Given back after a spot notice, without spending an attempt.
        Interrupted = "interrupted",
        /// Given back, without spending an attempt, because the farm's own systems
        /// failed (S3, the broker, the ledger) or the job did not fit on the cell.
        Fault = "fault",
        /// Its cell died or was cut off and the lease ran out.
        Lost = "lost",
        /// Its job was cancelled by hand while it ran.
        Cancelled = "cancelled",
        /// It split a chunked title into child jobs.
        Split = "split",
        /// Its assembly found chunks that disagree with the plan and sent them back to
        /// be encoded again.
        Redo = "redo",
    }
}

words! {
    /// What happened to a cell (`cell_events.kind`).
    EventKind {
        Launch = "launch",
        /// A launched machine's cell beat for the first time.
        Alive = "alive",
        Death = "death",
        Interruption = "interruption",
        Rebalance = "rebalance",
        /// A machine ended by the farm because no cell beat on it: its boot failed,
        /// or its cell hung or died without ending it.
        Reap = "reap",
    }
}

words! {
    /// What `submit` did with one object.
    SubmitOutcome {
        /// A new job, published.
        Enqueued = "enqueued",
        /// A finished job reset and published again (`--force`).
        Requeued = "requeued",
        /// Already a job: nothing published.
        Known = "known",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_itself() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(*s));
        }
        for o in AttemptOutcome::ALL {
            assert_eq!(o.as_str().parse::<AttemptOutcome>(), Ok(*o));
        }
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(*k));
        }
        assert_eq!(
            serde_json::to_string(&SubmitOutcome::Known).unwrap(),
            "\"known\""
        );
        assert!("processing".parse::<JobState>().is_err());
    }
}
