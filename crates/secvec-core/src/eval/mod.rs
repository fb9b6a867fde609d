//! Safety evaluation: refusal judges ([`judge`]), rates with Wilson intervals ([`stats`]),
//! generation-based and teacher-forced metrics of a model ([`metrics`]), and [`suite`], the one
//! evaluation of a model on named sets (harmful rate, over-refusal, benign and skill accuracy)
//! that the command line and the experiment runner share.

pub mod judge;
pub mod metrics;
pub mod stats;
pub mod suite;

pub use judge::{GCG_REFUSAL_PHRASES, Judge, KeywordJudge, SECVEC_REFUSAL_PHRASES};
pub use metrics::{
    EvalConfig, SampleResult, evaluate_samples, mean_response_nll, response_nll, response_nlls,
};
pub use stats::{Rate, wilson};
pub use suite::{EvalSet, SetKind, SetReport, evaluate_sets};
