// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

// Babylonian square root (as Uniswap V2's Math.sqrt), shared by the pools.
library SqrtMath {
    function sqrt(uint256 y) internal pure returns (uint256 z) {
        if (y > 3) {
            z = y;
            uint256 x = y / 2 + 1;
            while (x < z) {
                z = x;
                x = (y / x + x) / 2;
            }
        } else if (y != 0) {
            z = 1;
        }
    }
}
