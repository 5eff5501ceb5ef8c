//! Keeps long joins interruptible.
//!
//! DataFusion makes only leaf scans cooperative (they spend tokio's task budget per
//! batch). A join that emits many batches per input batch — a cross join most of all —
//! never returns to a cooperative leaf, so the task running it never yields: on a
//! small machine every runtime worker ends up spinning in such tasks, the statement
//! timeout and cancel requests cannot fire, and dropping the query cannot abort the
//! tasks. Wrapping every join (and UNNEST) in a `CooperativeExec` makes them spend the
//! budget per output batch too, so they yield, and are aborted, like scans.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PiecewiseMergeJoinExec, SortMergeJoinExec,
    SymmetricHashJoinExec,
};
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::prelude::SessionContext;

/// Adds [`YieldingJoins`] as the last physical optimizer rule of the session.
pub(crate) fn install(ctx: &SessionContext) {
    let state = SessionStateBuilder::new_from_existing(ctx.state())
        .with_physical_optimizer_rule(Arc::new(YieldingJoins))
        .build();
    *ctx.state_ref().write() = state;
}

/// Wraps operators that can emit many batches per input batch in `CooperativeExec`.
#[derive(Debug)]
pub(crate) struct YieldingJoins;

fn fans_out(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<CrossJoinExec>()
        || plan.is::<NestedLoopJoinExec>()
        || plan.is::<HashJoinExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<SymmetricHashJoinExec>()
        || plan.is::<PiecewiseMergeJoinExec>()
        || plan.is::<UnnestExec>()
}

impl PhysicalOptimizerRule for YieldingJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|p| {
            if fans_out(p.as_ref()) {
                Ok(Transformed::yes(
                    Arc::new(CooperativeExec::new(p)) as Arc<dyn ExecutionPlan>
                ))
            } else {
                Ok(Transformed::no(p))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "tidal_yielding_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
