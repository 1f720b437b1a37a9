"""The platform's rules as pure functions of data and time: programs and policy, fees, cashback."""
