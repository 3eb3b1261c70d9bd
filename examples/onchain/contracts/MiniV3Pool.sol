// SPDX-License-Identifier: MIT
// Emits Uniswap V3's Swap event with its exact signature. Not V3's concentrated-liquidity
// maths: the caller sends the input, names the output, and the pool checks it keeps value.
// Its TVL is its token balances (what the collector follows through ERC-20 Transfers).
pragma solidity ^0.8.20;

import "SqrtMath.sol";

interface IERC20Balance3 {
    function balanceOf(address owner) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
}

contract MiniV3Pool {
    address public token0;
    address public token1;

    event Swap(
        address indexed sender,
        address indexed recipient,
        int256 amount0,
        int256 amount1,
        uint160 sqrtPriceX96,
        uint128 liquidity,
        int24 tick
    );

    constructor(address token0_, address token1_) {
        token0 = token0_;
        token1 = token1_;
    }

    // zeroForOne: token0 in (already sent), amountOut of token1 out; else the reverse.
    function swap(address recipient, bool zeroForOne, uint256 amountIn, uint256 amountOut) external {
        address tokenOut = zeroForOne ? token1 : token0;
        IERC20Balance3(tokenOut).transfer(recipient, amountOut);
        uint256 balance0 = IERC20Balance3(token0).balanceOf(address(this));
        uint256 balance1 = IERC20Balance3(token1).balanceOf(address(this));
        int256 amount0 = zeroForOne ? int256(amountIn) : -int256(amountOut);
        int256 amount1 = zeroForOne ? -int256(amountOut) : int256(amountIn);
        uint256 sqrtPrice = SqrtMath.sqrt((balance1 << 96) / balance0) << 48;
        emit Swap(msg.sender, recipient, amount0, amount1, uint160(sqrtPrice), uint128(SqrtMath.sqrt(balance0 * balance1)), 0);
    }
}
