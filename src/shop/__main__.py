from shop.runtime.cli import main

main()
