//! `AnyExecutor`: the executor a spec string names, behind one type.
//!
//! `AnyExecutor::from_spec("threads:8")` builds the pool the string names;
//! the same program then runs serially, on threads, on worker processes or
//! on a cluster by changing one string (scale up vs scale out).

use crate::error::{Error, SubmitError};
use crate::executor::{ChunkFuture, Executor, ExecutorSpec, Shutdown};
use crate::future::TaskFuture;
use crate::process::ProcessPool;
use crate::serial::SerialExecutor;
use crate::task::Task;
use crate::thread::ThreadPool;

/// One of the executors, chosen at run time.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyExecutor {
    /// Inline, on the caller's thread.
    Serial(SerialExecutor),
    /// A thread pool.
    Threads(ThreadPool),
    /// A pool of worker processes.
    Processes(ProcessPool),
    /// A queue on Redis, served by workers anywhere.
    #[cfg(feature = "cluster")]
    Cluster(crate::cluster::ClusterPool),
}

impl AnyExecutor {
    /// Builds the executor `spec` names.
    ///
    /// ```
    /// use multitasking::{AnyExecutor, Executor};
    /// let ex = AnyExecutor::from_spec("threads:3").unwrap();
    /// assert_eq!(ex.max_workers(), 3);
    /// assert!(AnyExecutor::from_spec("gpus:9").is_err());
    /// ```
    pub fn from_spec(spec: &str) -> Result<AnyExecutor, Error> {
        AnyExecutor::build(&spec.parse()?)
    }

    /// Builds the executor of a parsed spec.
    pub fn build(spec: &ExecutorSpec) -> Result<AnyExecutor, Error> {
        match spec {
            ExecutorSpec::Serial => Ok(AnyExecutor::Serial(SerialExecutor::new())),
            ExecutorSpec::Threads(n) => {
                let mut b = ThreadPool::builder();
                if let Some(n) = n {
                    b = b.max_workers(*n);
                }
                Ok(AnyExecutor::Threads(b.build()?))
            }
            ExecutorSpec::Processes(n) => {
                let mut b = ProcessPool::builder();
                if let Some(n) = n {
                    b = b.max_workers(*n);
                }
                Ok(AnyExecutor::Processes(b.build()?))
            }
            #[cfg(feature = "cluster")]
            // The key, if any, comes from the environment: never a URL.
            ExecutorSpec::Redis(url) => Ok(AnyExecutor::Cluster(
                crate::cluster::ClusterPool::connect(url)?
                    .with_keys(crate::cluster::keys_from_env())?,
            )),
            #[cfg(not(feature = "cluster"))]
            ExecutorSpec::Redis(_) => Err(Error::Unavailable(
                "the cluster pool (redis://; the `cluster` feature)".to_string(),
            )),
        }
    }
}

macro_rules! each {
    ($self:ident, $ex:ident => $e:expr) => {
        match $self {
            AnyExecutor::Serial($ex) => $e,
            AnyExecutor::Threads($ex) => $e,
            AnyExecutor::Processes($ex) => $e,
            #[cfg(feature = "cluster")]
            AnyExecutor::Cluster($ex) => $e,
        }
    };
}

impl Executor for AnyExecutor {
    fn submit<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>> {
        each!(self, ex => ex.submit(task, input))
    }

    fn submit_chunk<T: Task>(
        &self,
        task: T,
        inputs: Vec<T::Input>,
    ) -> Result<ChunkFuture<T::Output>, SubmitError<Vec<T::Input>>> {
        each!(self, ex => ex.submit_chunk(task, inputs))
    }

    fn shutdown(&self, how: Shutdown) {
        each!(self, ex => ex.shutdown(how))
    }

    fn max_workers(&self) -> usize {
        each!(self, ex => ex.max_workers())
    }

    fn spec(&self) -> String {
        each!(self, ex => ex.spec())
    }
}
