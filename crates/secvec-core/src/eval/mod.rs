//! Safety evaluation: refusal judges ([`judge`]), rates with Wilson intervals ([`stats`]) and
//! generation-based and teacher-forced metrics of a model ([`metrics`]): harmful rate,
//! over-refusal, benign and skill accuracy, and the NLL of refusal vs compliant answers.

pub mod judge;
pub mod metrics;
pub mod stats;

pub use judge::{GCG_REFUSAL_PHRASES, Judge, KeywordJudge, SECVEC_REFUSAL_PHRASES};
pub use metrics::{
    EvalConfig, EvalReport, SampleResult, benign_accuracy, evaluate_samples, harmful_rate,
    mean_response_nll, over_refusal, response_nll, response_nlls, skill_accuracy,
};
pub use stats::{Rate, wilson};
