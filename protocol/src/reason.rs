use serde::{Deserialize, Serialize};

/// Why a command was rejected. The set is closed and each code's string is stable: POS
/// integrations switch on it. `message()` is a sentence a cashier can read.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    Invalid,
    Unauthorized,
    Conflict,
    UnknownMerchant,
    UnknownMember,
    UnknownProgramVersion,
    ProgramSuperseded,
    StaleEvent,
    InsufficientPoints,
    InsufficientCredit,
    RedemptionOverLimit,
    RedemptionUnderMinimum,
    UnknownReward,
    UnknownOrder,
    ReturnExceedsOrder,
    UnknownHold,
    HoldClosed,
    AliasTaken,
    CodeAlreadyUsed,
    CodeUnknown,
    PromotionExpired,
    BudgetExhausted,
    Overloaded,
    ConditionNotMet,
    PromotionLimitReached,
}

impl Reason {
    pub const ALL: [Reason; 25] = [
        Reason::Invalid,
        Reason::Unauthorized,
        Reason::Conflict,
        Reason::UnknownMerchant,
        Reason::UnknownMember,
        Reason::UnknownProgramVersion,
        Reason::ProgramSuperseded,
        Reason::StaleEvent,
        Reason::InsufficientPoints,
        Reason::InsufficientCredit,
        Reason::RedemptionOverLimit,
        Reason::RedemptionUnderMinimum,
        Reason::UnknownReward,
        Reason::UnknownOrder,
        Reason::ReturnExceedsOrder,
        Reason::UnknownHold,
        Reason::HoldClosed,
        Reason::AliasTaken,
        Reason::CodeAlreadyUsed,
        Reason::CodeUnknown,
        Reason::PromotionExpired,
        Reason::BudgetExhausted,
        Reason::Overloaded,
        Reason::ConditionNotMet,
        Reason::PromotionLimitReached,
    ];

    /// The stable code, as it appears in JSON.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Unauthorized => "unauthorized",
            Reason::Conflict => "conflict",
            Reason::UnknownMerchant => "unknown_merchant",
            Reason::UnknownMember => "unknown_member",
            Reason::UnknownProgramVersion => "unknown_program_version",
            Reason::ProgramSuperseded => "program_superseded",
            Reason::StaleEvent => "stale_event",
            Reason::InsufficientPoints => "insufficient_points",
            Reason::InsufficientCredit => "insufficient_credit",
            Reason::RedemptionOverLimit => "redemption_over_limit",
            Reason::RedemptionUnderMinimum => "redemption_under_minimum",
            Reason::UnknownReward => "unknown_reward",
            Reason::UnknownOrder => "unknown_order",
            Reason::ReturnExceedsOrder => "return_exceeds_order",
            Reason::UnknownHold => "unknown_hold",
            Reason::HoldClosed => "hold_closed",
            Reason::AliasTaken => "alias_taken",
            Reason::CodeAlreadyUsed => "code_already_used",
            Reason::CodeUnknown => "code_unknown",
            Reason::PromotionExpired => "promotion_expired",
            Reason::BudgetExhausted => "budget_exhausted",
            Reason::Overloaded => "overloaded",
            Reason::ConditionNotMet => "condition_not_met",
            Reason::PromotionLimitReached => "promotion_limit_reached",
        }
    }

    /// The general sentence for this reason; rejections usually carry a more precise one.
    pub fn message(self) -> &'static str {
        match self {
            Reason::Invalid => "The request is not valid.",
            Reason::Unauthorized => "This terminal is not allowed to do that.",
            Reason::Conflict => "This transaction number was already used for a different request.",
            Reason::UnknownMerchant => "This merchant has no loyalty program.",
            Reason::UnknownMember => "No member was found for this id.",
            Reason::UnknownProgramVersion => {
                "The terminal names a program version that does not exist."
            }
            Reason::ProgramSuperseded => "The loyalty program changed; refresh and try again.",
            Reason::StaleEvent => "The order is too old to be counted.",
            Reason::InsufficientPoints => "The member does not have enough points available.",
            Reason::InsufficientCredit => "The member does not have enough store credit.",
            Reason::RedemptionOverLimit => "Too much of this order is paid with points.",
            Reason::RedemptionUnderMinimum => {
                "Too few points to redeem; the program has a minimum."
            }
            Reason::UnknownReward => "That reward is not in the catalog.",
            Reason::UnknownOrder => "The original order was not found.",
            Reason::ReturnExceedsOrder => "More is being returned than was bought.",
            Reason::UnknownHold => "The hold was not found.",
            Reason::HoldClosed => "The hold was already captured, released or has lapsed.",
            Reason::AliasTaken => "That phone or card already belongs to another member.",
            Reason::CodeAlreadyUsed => "That code was already used.",
            Reason::CodeUnknown => "That code is not valid.",
            Reason::PromotionExpired => "That promotion is not running now.",
            Reason::BudgetExhausted => "That promotion has run out.",
            Reason::Overloaded => "The loyalty service is busy; try again shortly.",
            Reason::ConditionNotMet => "The order does not meet the promotion's conditions.",
            Reason::PromotionLimitReached => {
                "The member has used this promotion as often as it allows."
            }
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_serde_names_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.code()));
            assert!(
                seen.insert(reason.code()),
                "duplicate code {}",
                reason.code()
            );
            assert!(reason.message().ends_with('.'));
        }
    }
}
