//! Apiary's chaos suite: five real `apiary` nodes, each in its own network namespace on one
//! bridge, concurrent clients recording every operation, a nemesis injecting faults on a
//! schedule drawn from a seed, and a checker that the config register and its log stay
//! linearizable and that nothing acknowledged is lost or applied twice.

pub mod checker;
pub mod clients;
pub mod history;
pub mod hosts;
pub mod mesh;
pub mod nemesis;
pub mod report;
pub mod run;
pub mod slow_disk;
pub mod telemetry;
